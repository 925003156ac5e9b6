//! Snapshot and restore on real QEMU under TCG: clones answer over new agent
//! channels, diverge from each other, and damaged snapshots fail cleanly.
//!
//! Needs `NOOK_TEST_KERNEL` and `NOOK_TEST_MODULES` (see `boot.rs`); skips
//! with a reason otherwise. Prints snapshot and restore timings.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nook_qemu::{
    AfterSnapshot, GuestRam, QemuError, QemuRestoreConfig, QemuSnapshotError, QemuSnapshotInfo,
    QemuVm, SnapshotMemory, MANIFEST_FILE, MEMORY_FILE, STATE_FILE,
};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(120);

/// A guest that counts the commands it has answered (state that lives only
/// in guest memory) and keeps a value in a file on its tmpfs.
const COUNTER_INIT: &str = r#"
mkdir -p /tmp
mount -t tmpfs tmpfs /tmp
port=$(find_port nook.agent)
exec 3<>$port
n=0
echo "ready" >&3
while read -r cmd arg <&3; do
    n=$((n+1))
    case "$cmd" in
        ping) echo "pong $n" >&3 ;;
        put) echo "$arg" > /tmp/value; echo "ok $n" >&3 ;;
        get) echo "got $(cat /tmp/value 2>/dev/null) $n" >&3 ;;
        *) echo "unknown $n" >&3 ;;
    esac
done
poweroff -f
"#;

/// Line-based conversation with the test guest.
struct Agent {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Agent {
    fn take(vm: &mut QemuVm) -> Agent {
        let channel = vm.take_agent_channel().expect("agent channel");
        channel.set_read_timeout(Some(TIMEOUT)).unwrap();
        Agent {
            writer: channel.try_clone().unwrap(),
            reader: BufReader::new(channel),
        }
    }

    fn line(&mut self, vm: &mut QemuVm) -> String {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => line.trim_end().to_owned(),
            other => panic!("no answer ({other:?}): {}", vm.boot_failure(vm.uptime())),
        }
    }

    fn ask(&mut self, vm: &mut QemuVm, command: &str) -> String {
        self.writer
            .write_all(format!("{command}\n").as_bytes())
            .unwrap();
        self.line(vm)
    }
}

struct Guest {
    qemu: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    _dir: tempfile::TempDir,
}

fn guest() -> Option<Guest> {
    let (qemu, kernel) = qemu_and_kernel()?;
    let modules = env_path(
        "NOOK_TEST_MODULES",
        "the kernel's lib/modules/<release> directory",
    )?;
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    let script = format!("{INIT_PRELUDE}{COUNTER_INIT}");
    std::fs::write(&initrd, busybox_initramfs(&modules, &script).unwrap()).unwrap();
    Some(Guest {
        qemu,
        kernel,
        initrd,
        _dir: dir,
    })
}

/// A run directory on tmpfs when there is one: where a shared RAM file
/// belongs.
fn run_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// Boots the counter guest and waits for its `ready`.
fn boot(g: &Guest, ram: GuestRam, run: &Path) -> (QemuVm, Agent) {
    let mut cfg = tcg_config(&g.qemu, &g.kernel, run);
    cfg.initrd = Some(g.initrd.clone());
    cfg.ram = ram;
    let mut vm = QemuVm::start(cfg).unwrap();
    let mut agent = Agent::take(&mut vm);
    assert_eq!(agent.line(&mut vm), "ready");
    (vm, agent)
}

/// How long a restore took: until [`QemuVm::restore`] returned (state
/// loaded, guest continued) and until the guest's first answer.
struct RestoreTime {
    returned: Duration,
    answered: Duration,
}

impl std::fmt::Display for RestoreTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "returned {:?}, answered {:?}",
            self.returned, self.answered
        )
    }
}

/// Restores a clone and times it from the call to the guest's first answer,
/// which must continue the counter at `next`.
fn clone_of(snap: &Path, run: &Path, next: u32) -> (QemuVm, Agent, RestoreTime) {
    let started = Instant::now();
    let mut vm = QemuVm::restore(snap, run, QemuRestoreConfig::default())
        .unwrap_or_else(|e| panic!("restore failed: {e}"));
    let returned = started.elapsed();
    let mut agent = Agent::take(&mut vm);
    assert_eq!(agent.ask(&mut vm, "ping"), format!("pong {next}"));
    let answered = started.elapsed();
    (vm, agent, RestoreTime { returned, answered })
}

fn clones_answer_and_diverge(ram: GuestRam, expect: SnapshotMemory) {
    let Some(g) = guest() else {
        return;
    };
    let src_dir = run_dir();
    let (mut src, mut src_agent) = boot(&g, ram, src_dir.path());
    assert_eq!(src_agent.ask(&mut src, "put base"), "ok 1");

    let snaps = tempfile::tempdir().unwrap();
    let snap = snaps.path().join("warm");
    let info = src.snapshot(&snap, AfterSnapshot::Resume).unwrap();
    assert_eq!(info.memory, expect);
    assert_eq!(
        QemuSnapshotInfo::open(&snap).unwrap().state_crc32,
        info.state_crc32
    );
    let names: Vec<String> = std::fs::read_dir(snaps.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["warm"], "no partial directory is left behind");
    assert_eq!(
        snap.join(MEMORY_FILE).exists(),
        expect == SnapshotMemory::File
    );

    // The source runs on, and what it does later is not in the snapshot.
    assert_eq!(src_agent.ask(&mut src, "put source-later"), "ok 2");

    let run_a = run_dir();
    let run_b = run_dir();
    let (mut a, mut agent_a, restore_a) = clone_of(&snap, run_a.path(), 2);
    let (mut b, mut agent_b, restore_b) = clone_of(&snap, run_b.path(), 2);
    assert_eq!(agent_a.ask(&mut a, "get"), "got base 3");
    assert_eq!(agent_a.ask(&mut a, "put clone-a"), "ok 4");
    assert_eq!(
        agent_b.ask(&mut b, "get"),
        "got base 3",
        "a's write is not in b"
    );
    assert_eq!(agent_b.ask(&mut b, "put clone-b"), "ok 4");
    assert_eq!(
        agent_a.ask(&mut a, "get"),
        "got clone-a 5",
        "b's write is not in a"
    );
    assert_eq!(src_agent.ask(&mut src, "get"), "got source-later 3");
    assert_ne!(a.pid(), b.pid());

    // A clone can be snapshotted too; its RAM is a private mapping, so the
    // second-generation snapshot carries RAM in its stream.
    let snap2 = snaps.path().join("from-clone");
    let info2 = a.snapshot(&snap2, AfterSnapshot::StayPaused).unwrap();
    assert_eq!(info2.memory, SnapshotMemory::Stream);
    assert_eq!(
        a.qmp_execute("query-status", None).unwrap()["running"],
        false
    );
    a.resume().unwrap();
    assert_eq!(agent_a.ask(&mut a, "ping"), "pong 6");
    let run_c = run_dir();
    let (mut c, mut agent_c, restore_c) = clone_of(&snap2, run_c.path(), 6);
    assert_eq!(agent_c.ask(&mut c, "get"), "got clone-a 7");

    for vm in [&mut src, &mut a, &mut b, &mut c] {
        let pid = vm.pid();
        vm.shutdown(Duration::from_secs(10)).unwrap();
        assert!(process_gone(pid));
    }
    let t = info.timings.expect("fresh snapshots carry timings");
    let t2 = info2.timings.expect("fresh snapshots carry timings");
    eprintln!(
        "snapshot ({ram:?}): paused {:?} (save {:?}, ram copy {:?}), total {:?}; \
         state {} KiB, ram data {} KiB",
        t.paused,
        t.save,
        t.memory_copy,
        t.total,
        info.state_bytes >> 10,
        info.memory_data_bytes >> 10
    );
    eprintln!("restore ({ram:?}): {restore_a}; {restore_b}");
    eprintln!(
        "clone snapshot (stream): paused {:?}, total {:?}, state {} KiB; \
         restore {restore_c}",
        t2.paused,
        t2.total,
        info2.state_bytes >> 10
    );
}

#[test]
fn clones_from_a_mapped_ram_snapshot_answer_and_diverge() {
    clones_answer_and_diverge(GuestRam::SharedFile, SnapshotMemory::File);
}

#[test]
fn clones_from_a_stream_snapshot_answer_and_diverge() {
    clones_answer_and_diverge(GuestRam::Anonymous, SnapshotMemory::Stream);
}

/// Copies a snapshot directory so each case can damage its own.
fn copy_snapshot(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for name in [MANIFEST_FILE, STATE_FILE, MEMORY_FILE] {
        if from.join(name).exists() {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }
}

fn set_manifest_field(snap: &Path, field: &str, value: serde_json::Value) {
    edit_manifest(snap, |m| m[field] = value);
}

fn edit_manifest(snap: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = snap.join(MANIFEST_FILE);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, manifest.to_string()).unwrap();
}

/// Restores `snap` expecting QEMU itself to reject the state: the error
/// carries QEMU's stderr and QEMU is gone.
fn expect_qemu_rejects(snap: &Path, run: &Path) -> String {
    let options = QemuRestoreConfig {
        verify_state: false,
        ..QemuRestoreConfig::default()
    };
    match QemuVm::restore(snap, run, options) {
        Err(err @ QemuError::LoadFailed { pid, .. }) => {
            assert!(process_gone(pid), "qemu {pid} is left behind");
            err.to_string()
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(vm) => panic!("damaged snapshot restored (pid {})", vm.pid()),
    }
}

#[test]
fn damaged_snapshots_fail_restore_with_clear_errors_and_no_qemu_left() {
    let Some(g) = guest() else {
        return;
    };
    let src_dir = run_dir();
    let (mut src, _agent) = boot(&g, GuestRam::SharedFile, src_dir.path());
    let snaps = tempfile::tempdir().unwrap();
    let good = snaps.path().join("good");
    let info = src.snapshot(&good, AfterSnapshot::StayPaused).unwrap();
    src.kill().unwrap();
    let err = src.snapshot(&good, AfterSnapshot::Resume).unwrap_err();
    assert!(matches!(err, QemuError::SnapshotExists { .. }), "{err}");
    let run = tempfile::tempdir().unwrap();

    // Truncated state: caught by the size check before QEMU starts.
    let snap = snaps.path().join("truncated");
    copy_snapshot(&good, &snap);
    let state = snap.join(STATE_FILE);
    let half = info.state_bytes / 2;
    std::fs::File::options()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(half)
        .unwrap();
    let err = QemuVm::restore(&snap, run.path(), QemuRestoreConfig::default()).unwrap_err();
    match &err {
        QemuError::SnapshotRestore {
            source: QemuSnapshotError::SizeMismatch { actual, .. },
            ..
        } => assert_eq!(*actual, half),
        other => panic!("unexpected error: {other}"),
    }
    eprintln!(
        "truncated state: {err}: {}",
        std::error::Error::source(&err).unwrap()
    );

    // The same truncation with the manifest made to agree: QEMU hits the
    // end of the stream and says so.
    set_manifest_field(&snap, "state_bytes", half.into());
    let msg = expect_qemu_rejects(&snap, run.path());
    assert!(msg.contains("qemu stderr:\n"), "{msg}");
    assert!(!msg.contains("qemu stderr: (empty)"), "{msg}");
    eprintln!("truncated state, manifest adjusted: {msg}");

    // A flipped byte in the middle: the checksum catches it.
    let snap = snaps.path().join("flipped");
    copy_snapshot(&good, &snap);
    let mut bytes = std::fs::read(snap.join(STATE_FILE)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(snap.join(STATE_FILE), &bytes).unwrap();
    let err = QemuVm::restore(&snap, run.path(), QemuRestoreConfig::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            QemuError::SnapshotRestore {
                source: QemuSnapshotError::ChecksumMismatch { .. },
                ..
            }
        ),
        "{err}"
    );

    // A stream that is not a migration stream at all: QEMU refuses it.
    let snap = snaps.path().join("garbage");
    copy_snapshot(&good, &snap);
    let mut bytes = std::fs::read(snap.join(STATE_FILE)).unwrap();
    bytes[..4].copy_from_slice(b"JUNK");
    std::fs::write(snap.join(STATE_FILE), &bytes).unwrap();
    let msg = expect_qemu_rejects(&snap, run.path());
    assert!(msg.contains("migration"), "{msg}");
    eprintln!("bad magic: {msg}");

    // A short memory file and a missing manifest.
    let snap = snaps.path().join("short-memory");
    copy_snapshot(&good, &snap);
    std::fs::File::options()
        .write(true)
        .open(snap.join(MEMORY_FILE))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let err = QemuVm::restore(&snap, run.path(), QemuRestoreConfig::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            QemuError::SnapshotRestore {
                source: QemuSnapshotError::SizeMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
    std::fs::remove_file(snap.join(MANIFEST_FILE)).unwrap();
    let err = QemuVm::restore(&snap, run.path(), QemuRestoreConfig::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            QemuError::SnapshotRestore {
                source: QemuSnapshotError::ManifestMissing { .. },
                ..
            }
        ),
        "{err}"
    );

    // The manifest is data: one asking for another binary, extra arguments
    // or no sandbox is refused before any QEMU starts.
    for (field, value) in [
        ("binary", serde_json::json!("/bin/sh")),
        ("extra_args", serde_json::json!(["-device", "pci-testdev"])),
        ("sandbox", serde_json::json!(false)),
    ] {
        let snap = snaps.path().join(format!("untrusted-{field}"));
        copy_snapshot(&good, &snap);
        edit_manifest(&snap, |m| m["config"][field] = value);
        let err = QemuVm::restore(&snap, run.path(), QemuRestoreConfig::default()).unwrap_err();
        match &err {
            QemuError::SnapshotRestore {
                source: QemuSnapshotError::Untrusted { field: f, .. },
                ..
            } => assert_eq!(*f, field),
            other => panic!("{field}: unexpected error: {other}"),
        }
        eprintln!(
            "untrusted {field}: {}",
            std::error::Error::source(&err).unwrap()
        );
    }

    // The untouched snapshot still restores.
    let (mut vm, _agent, _) = clone_of(&good, run.path(), 1);
    vm.shutdown(Duration::from_secs(10)).unwrap();
}
