//! End-to-end tests of images and volumes: real guests on the qemu engine.
//!
//! A test image (busybox plus files exercising whiteouts, an opaque
//! directory, symlinks and hard links, with Env, WorkingDir and Cmd) is
//! pushed to Debian's `docker-registry` on a free loopback port, or written
//! as a `docker save` archive and an OCI layout, then run with `nook run`.
//! Images and volumes go to the default `$NOOK_HOME` under unique names and
//! are removed afterwards. Tests skip with a printed reason when the guest
//! assets, QEMU, `docker-registry`, busybox or mkfs.ext4 are missing.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

mod common;
use common::{nook, ok, template_key, text};
use nook_image::testing::{LayerBuilder, Registry, TestImage, TestLayer};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "cat", "ls", "id", "pwd", "echo", "test", "stat", "sync", "touch", "grep", "dd", "rm",
    "mkdir", "env",
];

fn nook_out(args: &[&str]) -> Output {
    nook().args(args).output().expect("run nook")
}

/// Skips (with a printed reason) when the machine cannot run guests or
/// build the test image.
fn ready() -> bool {
    if !common::ready() {
        return false;
    }
    if !Path::new(BUSYBOX).is_file() {
        eprintln!("skipping: {BUSYBOX} is missing (apt-get install busybox-static)");
        return false;
    }
    true
}

/// A name no other test run uses.
fn unique(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Busybox with its applets, passwd/group, files that later layers
/// replace, white out or hide, and links.
fn test_image() -> TestImage {
    let busybox = std::fs::read(BUSYBOX).expect("read busybox");
    let mut base = LayerBuilder::new();
    base.dir("bin", 0o755)
        .file("bin/busybox", &busybox, 0o755)
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
            0o644,
        )
        .file(
            "etc/group",
            b"root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
            0o644,
        )
        .file("etc/marker", b"marker-v1\n", 0o644)
        .file("etc/removed", b"whited out\n", 0o644)
        .file("opq/old", b"old\n", 0o644)
        .dir("home", 0o755)
        .dir("home/app", 0o755);
    for applet in APPLETS {
        base.symlink(&format!("bin/{applet}"), "busybox");
    }
    let top = LayerBuilder::new()
        .file("etc/marker", b"marker-v2\n", 0o644)
        .whiteout("etc", "removed")
        .dir("opq", 0o755)
        .opaque("opq")
        .file("opq/new", b"new\n", 0o644)
        .symlink("etc/marker-link", "/etc/marker")
        .file("data/file", b"linked\n", 0o644)
        .hardlink("data/file-link", "data/file")
        .dir("work", 0o755)
        .tar();
    TestImage::with_config(
        vec![TestLayer::gzip(base.tar()), TestLayer::gzip(top)],
        "amd64",
        serde_json::json!({
            "Env": ["PATH=/bin", "GREETING=hello"],
            "WorkingDir": "/work",
            "Cmd": ["sh", "-c", "echo default-cmd $GREETING; pwd"],
        }),
    )
}

/// Removes an image name from the store when dropped.
struct ImageName(String);

impl Drop for ImageName {
    fn drop(&mut self) {
        let _ = nook_out(&["rmi", &self.0]);
    }
}

#[test]
fn registry_image_runs_with_its_config() {
    if !ready() {
        return;
    }
    let Some(registry) = Registry::start(None) else {
        return;
    };
    let image = test_image();
    let repo = unique("nooktest");
    registry.push(
        &format!("{repo}:1"),
        &image,
        &oci_client::secrets::RegistryAuth::Anonymous,
    );
    let reference = format!("{}/{repo}:1", registry.host);
    let _cleanup = ImageName(reference.clone());

    // Pulled on demand; the tree the layers make, the config's Env and WorkingDir.
    let script = "cat /etc/marker; test -e /etc/removed || echo removed-gone; ls /opq; \
                  cat /etc/marker-link; stat -c %h /data/file-link; echo $GREETING; pwd; \
                  id -u; echo written > /newfile && cat /newfile";
    let out = nook_out(&["run", &reference, "--", "sh", "-c", script]);
    assert_eq!(
        ok(&out),
        "marker-v2\nremoved-gone\nnew\nmarker-v2\n2\nhello\n/work\n0\nwritten\n"
    );

    // The store has it now; `nook images` lists it.
    let list: serde_json::Value =
        serde_json::from_str(&ok(&nook_out(&["images", "--json"]))).expect("json");
    let listed = list
        .as_array()
        .expect("array")
        .iter()
        .any(|i| i["references"].to_string().contains(&reference));
    assert!(listed, "{list}");

    // No command: the image's Cmd. -e, -w and -u win over the image.
    let out = nook_out(&["run", &reference]);
    assert_eq!(ok(&out), "default-cmd hello\n/work\n");
    let out = nook_out(&[
        "run",
        "-e",
        "GREETING=over",
        "-w",
        "/tmp",
        "-u",
        "app",
        &reference,
        "--",
        "sh",
        "-c",
        "echo $GREETING $PATH; pwd; id -u; id -G; echo $HOME",
    ]);
    assert_eq!(ok(&out), "over /bin\n/tmp\n1000\n1000 50\n/home/app\n");
}

#[test]
fn scratch_disk_holds_the_writable_layer() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let archive = dir.path().join("image.tar");
    let name = unique("nooktest-scratch");
    test_image().write_docker_archive(&archive, &[&format!("{name}:1")]);
    let _cleanup = ImageName(format!("{name}:1"));
    ok(&nook_out(&["image", "import", archive.to_str().unwrap()]));
    // The overlay's upper layer lives on the scratch disk (ext4, rw), the
    // image on the read-only root disk (ext4, ro); the agent shows both
    // under /run/nook.
    let out = nook_out(&[
        "run",
        "--disk-size",
        "64M",
        &format!("{name}:1"),
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1M count=8 2>/dev/null && stat -c %s /big; \
         grep -c ' /run/nook/rw ext4 rw' /proc/mounts; grep -c ' /run/nook/lower ext4 ro' /proc/mounts",
    ]);
    assert_eq!(ok(&out), "8388608\n1\n1\n");
}

#[test]
fn docker_archive_and_oci_layout_import_and_run() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let image = test_image();

    let archive = dir.path().join("image.tar");
    let archived = unique("nooktest-archive");
    image.write_docker_archive(&archive, &[&format!("{archived}:1")]);
    let _a = ImageName(format!("{archived}:1"));
    ok(&nook_out(&["image", "import", archive.to_str().unwrap()]));
    let out = nook_out(&["run", &format!("{archived}:1"), "--", "cat", "/etc/marker"]);
    assert_eq!(ok(&out), "marker-v2\n");

    let layout = dir.path().join("layout");
    let laid_out = unique("nooktest-layout");
    image.write_oci_layout(&layout, "1");
    let _l = ImageName(format!("{laid_out}:1"));
    ok(&nook_out(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        &format!("{laid_out}:1"),
    ]));
    let out = nook_out(&[
        "run",
        &format!("{laid_out}:1"),
        "--",
        "sh",
        "-c",
        "cat /data/file; pwd",
    ]);
    assert_eq!(ok(&out), "linked\n/work\n");
}

/// Deletes a named volume when dropped.
struct VolumeName(String);

impl Drop for VolumeName {
    fn drop(&mut self) {
        let _ = nook_out(&["volume", "rm", &self.0]);
    }
}

#[test]
fn volumes_persist_across_vms_and_ro_refuses_writes() {
    if !ready() {
        return;
    }
    let Some(mkfs) = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("skipping: mkfs.ext4 is not installed (apt-get install e2fsprogs)");
        return;
    };
    let name = unique("nooktest-vol");
    let _cleanup = VolumeName(name.clone());
    let vol = format!("{name}:/data");
    let out = nook_out(&[
        "run",
        "--volume",
        &vol,
        "--volume-size",
        "64M",
        "--",
        "sh",
        "-c",
        "echo persisted > /data/f && sync",
    ]);
    ok(&out);

    // A host ext4 file, at a path with a space, and the named volume read-only.
    let dir = tempfile::tempdir().expect("temp dir");
    let img = dir.path().join("host.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(32 << 20))
        .expect("create image");
    let made = Command::new(mkfs)
        .args(["-q", "-F"])
        .arg(&img)
        .status()
        .expect("mkfs");
    assert!(made.success());
    let host = format!("{}:/my dir", img.display());
    let ro = format!("{name}:/data:ro");
    let out = nook_out(&[
        "run",
        "-v",
        &ro,
        "-v",
        &host,
        "--",
        "sh",
        "-c",
        "cat /data/f; echo host > '/my dir/h' && cat '/my dir/h'; touch /data/g",
    ]);
    assert_ne!(out.status.code(), Some(0), "a write to a :ro volume worked");
    assert_eq!(text(&out.stdout), "persisted\nhost\n");
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );

    // Listed, and removable.
    let list = ok(&nook_out(&["volume", "ls", "--json"]));
    assert!(list.contains(&format!("\"{name}\"")), "{list}");
    ok(&nook_out(&["volume", "rm", &name]));
    let list = ok(&nook_out(&["volume", "ls", "--json"]));
    assert!(!list.contains(&format!("\"{name}\"")), "{list}");
}

#[test]
fn debian_image_builds_and_runs_python() {
    // scripts/test (and so CI) sets NOOK_TEST_DEBIAN_IMAGE: the first build
    // on a machine takes a few minutes, later runs reuse the cached image.
    if std::env::var_os("NOOK_TEST_DEBIAN_IMAGE").is_none()
        && std::env::var_os("NOOK_SLOW_TESTS").is_none()
    {
        eprintln!("skipping: set NOOK_TEST_DEBIAN_IMAGE=1 to build a Debian image with python3 (minutes, needs a Debian mirror)");
        return;
    }
    if !ready() {
        return;
    }
    if !common::have_mmdebstrap() {
        return;
    }
    // A fixed name: the store caches Debian builds by recipe, so only the
    // first run builds (the image stays for the next run).
    let name = "nook-test-python";
    ok(&nook_out(&[
        "image",
        "build",
        name,
        "--debian",
        "bookworm",
        "--packages",
        "python3",
    ]));
    let out = nook_out(&["run", name, "--", "python3", "-c", "print(6*7)"]);
    assert_eq!(ok(&out), "42\n");
}

#[test]
fn image_runs_restore_from_a_template_of_their_own() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = dir.path().join("layout");
    let name = unique("nooktest-template");
    test_image().write_oci_layout(&layout, "1");
    let _n = ImageName(format!("{name}:1"));
    ok(&nook_out(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        &format!("{name}:1"),
    ]));
    let debug_run = |args: &[&str]| {
        let out = nook()
            .env("NOOK_LOG", "debug")
            .args(args)
            .output()
            .expect("run nook");
        let stdout = ok(&out);
        (stdout, text(&out.stderr))
    };
    let image = format!("{name}:1");
    let (_, first) = debug_run(&["run", &image, "--", "cat", "/etc/marker"]);
    // Other tests here run the same image (so the same template) at the
    // same time: the first run may find the template made by one of them.
    let (_, image_key) = template_key(&first)
        .unwrap_or_else(|| panic!("an image run has a template; its log:\n{first}"));
    let (stdout, second) = debug_run(&["run", &image, "--", "cat", "/etc/marker"]);
    assert_eq!(stdout, "marker-v2\n", "the clone runs in the image's root");
    assert_eq!(
        template_key(&second),
        Some((true, image_key.clone())),
        "{second}"
    );
    let (_, plain) = debug_run(&["run", "--", "true"]);
    let (_, plain_key) = template_key(&plain)
        .unwrap_or_else(|| panic!("the default configuration has one too; its log:\n{plain}"));
    assert_ne!(plain_key, image_key, "the image's template is its own");
}
