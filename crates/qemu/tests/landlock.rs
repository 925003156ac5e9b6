//! QEMU runs under a Landlock domain that leaves only its own files (and
//! the system files it needs to start) reachable: asked over QMP to open
//! a file elsewhere (`blockdev-add` with the `file` driver), it gets
//! "Permission denied"; a file in its run directory opens; with
//! confinement off the outside file opens too. Under `-accel kvm` the
//! domain grants `/dev/kvm` with its device ioctls. QEMU is started
//! paused (`-S`), so no guest runs. One test, because it turns
//! confinement off and on for the whole process.

mod support;

use std::path::Path;

use nook_qemu::{Accel, QemuError, QemuVm, QmpError};
use serde_json::json;
use support::*;

/// Has `vm` open `path` read-only as block node `node`: `Ok` or QEMU's
/// error text.
fn open_in_qemu(vm: &mut QemuVm, node: &str, path: &Path) -> Result<(), String> {
    let args = json!({
        "driver": "file",
        "node-name": node,
        "filename": path,
        "read-only": true,
    });
    match vm.qmp_execute("blockdev-add", Some(args)) {
        Ok(_) => Ok(()),
        Err(QemuError::Qmp {
            source: QmpError::CommandFailed { desc, .. },
            ..
        }) => Err(desc),
        Err(e) => panic!("blockdev-add {}: {e}", path.display()),
    }
}

fn paused(cfg: &mut nook_qemu::QemuConfig) -> QemuVm {
    cfg.extra_args.push("-S".into());
    QemuVm::start(cfg.clone()).unwrap()
}

#[test]
fn qemu_opens_its_own_files_and_nothing_else_unless_confinement_is_off() {
    let Some((qemu, kernel)) = qemu_and_kernel() else {
        return;
    };
    if nook_seccomp::landlock_abi().is_none() {
        eprintln!("skipping: no landlock in this kernel");
        return;
    }
    nook_seccomp::set_confine_enabled(true);
    confined_qemu_uses_kvm(&qemu, &kernel);
    let run_dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let inside = run_dir.path().join("inside.img");
    let outside = elsewhere.path().join("outside.img");
    std::fs::write(&inside, [0u8; 4096]).unwrap();
    std::fs::write(&outside, [0u8; 4096]).unwrap();

    let mut cfg = tcg_config(&qemu, &kernel, run_dir.path());
    let mut vm = paused(&mut cfg);
    let err = open_in_qemu(&mut vm, "out", &outside).unwrap_err();
    assert!(err.contains("Permission denied"), "{err}");
    // A host file QEMU does not need to start.
    let err = open_in_qemu(&mut vm, "passwd", Path::new("/etc/passwd")).unwrap_err();
    assert!(err.contains("Permission denied"), "{err}");
    open_in_qemu(&mut vm, "in", &inside).unwrap();
    vm.shutdown(std::time::Duration::from_secs(10)).unwrap();

    nook_seccomp::set_confine_enabled(false);
    let mut cfg = tcg_config(&qemu, &kernel, run_dir.path());
    let mut vm = paused(&mut cfg);
    let opened = open_in_qemu(&mut vm, "out", &outside);
    vm.shutdown(std::time::Duration::from_secs(10)).unwrap();
    nook_seccomp::set_confine_enabled(true);
    opened.unwrap();
}

/// A confined QEMU under `-accel kvm` creates its VM (QMP `query-kvm`
/// says enabled).
fn confined_qemu_uses_kvm(qemu: &Path, kernel: &Path) {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("skipping: /dev/kvm is not usable here");
        return;
    }
    let run_dir = tempfile::tempdir().unwrap();
    let mut cfg = tcg_config(qemu, kernel, run_dir.path());
    cfg.accel = Accel::Kvm;
    // Some nested KVMs refuse the MSR behind this feature.
    cfg.cpu_model = Some("host,-arch-capabilities".into());
    let mut vm = paused(&mut cfg);
    let kvm = vm.qmp_execute("query-kvm", None).unwrap();
    assert_eq!(kvm["enabled"], true, "{kvm}");
    vm.shutdown(std::time::Duration::from_secs(10)).unwrap();
}
