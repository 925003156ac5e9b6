//! The Rust toolchain image: built (or found cached) by
//! `ensure_rust_image`, and it compiles and links a Rust program in a real
//! guest (the qemu engine under TCG here). The first build on a machine
//! takes minutes: it runs where scripts/test sets NOOK_TEST_DEBIAN_IMAGE.

use std::time::Instant;

use nook::{ImageRoot, ImageStore, Vm, VmConfig};
use nook_serve::toolchain::{ensure_rust_image, RUST_IMAGE};

fn ready() -> bool {
    if std::env::var_os("NOOK_TEST_DEBIAN_IMAGE").is_none()
        && std::env::var_os("NOOK_SLOW_TESTS").is_none()
    {
        eprintln!("skipping: set NOOK_TEST_DEBIAN_IMAGE=1 to build the Rust toolchain image (minutes, needs a Debian mirror)");
        return false;
    }
    let agent = std::env::var_os("NOOK_AGENT")
        .map(|p| std::path::Path::new(&p).is_file())
        .unwrap_or(false);
    if !agent {
        eprintln!("skipping: NOOK_AGENT is not set to a built agent (run scripts/test)");
        return false;
    }
    if std::process::Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: mmdebstrap is not installed (apt-get install mmdebstrap)");
        return false;
    }
    true
}

#[test]
fn the_rust_image_is_built_once_and_links_rust_programs() {
    if !ready() {
        return;
    }
    let home = nook::default_home();
    let mut progress = Vec::new();
    let started = Instant::now();
    let reference = ensure_rust_image(&home, &mut progress).expect("rust image");
    eprintln!(
        "ensure_rust_image: {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&progress)
    );
    assert_eq!(reference, RUST_IMAGE);

    // Cached now: the second call builds nothing and says nothing.
    let mut again = Vec::new();
    let started = Instant::now();
    assert_eq!(
        ensure_rust_image(&home, &mut again).expect("cached rust image"),
        RUST_IMAGE
    );
    assert!(again.is_empty(), "{}", String::from_utf8_lossy(&again));
    assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());

    let store = ImageStore::open(&home.join("images")).expect("image store");
    let info = store.get(&reference).expect("lookup").expect("image");
    let vm = Vm::start(VmConfig {
        progress: false,
        memory_mib: 1024,
        image: Some(ImageRoot::new(&info)),
        ..VmConfig::default()
    })
    .expect("boot the rust image");
    // rustc compiles and gcc links: the toolchain works, not just exists.
    let script = "cd /tmp && echo 'fn main() { println!(\"linked {}\", 6 * 7); }' > m.rs \
                  && rustc m.rs && ./m && cargo --version && git --version && make --version | head -1";
    let started = Instant::now();
    let out = vm.exec(["sh", "-c", script]).output().expect("exec");
    eprintln!(
        "rustc + link in the guest: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code,
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("linked 42\ncargo 1."), "{stdout}");
    assert!(stdout.contains("git version"), "{stdout}");
    assert!(stdout.contains("GNU Make"), "{stdout}");
}
