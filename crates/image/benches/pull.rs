//! Pull, import and lookup timings on this machine, printed as a table:
//! `cargo bench -p nook-image --bench pull`. Needs docker-registry.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use nook_image::PullOptions;

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    (out, started.elapsed())
}

fn main() {
    let Some(registry) = common::Registry::start(None) else {
        return;
    };
    let image = common::sample_image();
    registry.push(
        "bench:1",
        &image,
        &oci_client::secrets::RegistryAuth::Anonymous,
    );
    let reference = format!("{}/bench:1", registry.host);
    let opts = PullOptions::default();
    println!("{:<52} {:>12}", "operation (3-layer test image)", "time");

    let mut cold = Vec::new();
    let mut sizes = (0, 0, 0);
    for _ in 0..5 {
        let (_tmp, store) = common::store();
        let (info, t) = time(|| store.pull(&reference, &opts).expect("pull"));
        cold.push(t);
        sizes = (
            common::store_size(store.root()),
            info.size,
            info.content_size,
        );
    }
    cold.sort();
    println!(
        "{:<52} {:>12?}",
        "pull into an empty store (median of 5)", cold[2]
    );

    let (_tmp, store) = common::store();
    store.pull(&reference, &opts).expect("pull");
    let mut warm: Vec<Duration> = (0..5)
        .map(|_| time(|| store.pull(&reference, &opts).expect("pull")).1)
        .collect();
    warm.sort();
    println!(
        "{:<52} {:>12?}",
        "pull again (tag resolved, nothing downloaded)", warm[2]
    );
    let by_digest = format!("{}/bench@{}", registry.host, image.digest());
    let (_, t) = time(|| store.pull(&by_digest, &opts).expect("pull by digest"));
    println!(
        "{:<52} {:>12?}",
        "pull by digest, already stored (no network)", t
    );
    let (_, t) = time(|| store.get(&reference).expect("get"));
    println!("{:<52} {:>12?}", "get by name", t);

    let tmp = tempfile::tempdir().expect("temp dir");
    let layout = tmp.path().join("layout");
    image.write_oci_layout(&layout, "1");
    let (_t2, store2) = common::store();
    let (_, t) = time(|| {
        store2
            .import_oci_layout(&layout, Some("bench:1"))
            .expect("import")
    });
    println!("{:<52} {:>12?}", "import OCI layout into an empty store", t);

    if let Ok(dir) = std::env::var("NOOK_BENCH_TREE") {
        bench_tree(&registry, &dir, &opts);
    }

    println!(
        "store after one pull: {} KiB on disk (rootfs file {} KiB apparent, blobs {} B)",
        sizes.0 / 1024,
        sizes.1 / 1024,
        sizes.2
    );
}

/// Packs a real directory tree as one gzip layer, pushes and pulls it.
fn bench_tree(registry: &common::Registry, dir: &str, opts: &PullOptions) {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir).expect("pack the tree");
    let tar = builder.into_inner().expect("tar");
    let tar_len = tar.len();
    let image = common::TestImage::new(vec![common::TestLayer::gzip(tar)], "amd64");
    registry.push(
        "tree:1",
        &image,
        &oci_client::secrets::RegistryAuth::Anonymous,
    );
    let (_tmp, store) = common::store();
    let reference = format!("{}/tree:1", registry.host);
    let (info, t) = time(|| store.pull(&reference, opts).expect("pull tree"));
    println!(
        "{:<52} {:>12?}",
        format!("pull {dir} ({} MiB tar)", tar_len >> 20),
        t
    );
    println!(
        "  layer blob {} MiB, rootfs {} MiB, store on disk {} MiB",
        info.content_size >> 20,
        info.size >> 20,
        common::store_size(store.root()) >> 20
    );
}
