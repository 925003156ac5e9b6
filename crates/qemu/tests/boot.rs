//! Boots a real kernel under TCG and talks to it over the agent channel.
//!
//! Needs `NOOK_TEST_KERNEL` (a bzImage) and `NOOK_TEST_MODULES` (its
//! `lib/modules/<release>` directory, for the virtio modules), or
//! `NOOK_TEST_INITRD` for the given-initramfs test; skips with a reason
//! otherwise.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use nook_qemu::{QemuDiskConfig, QemuVm};
use support::*;

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

const ECHO_INIT: &str = r#"
port=$(find_port nook.agent)
wait_for /dev/vda
exec 3<>$port
echo "hello from guest $(uname -r)" >&3
read -r line <&3
echo "echo: $line" >&3
echo "disk: $(head -c 8 /dev/vda) ro=$(cat /sys/block/vda/ro)" >&3
echo "nook-test: done"
poweroff -f
"#;

#[test]
fn boots_echoes_over_agent_channel_and_powers_off() {
    let Some((qemu, kernel)) = qemu_and_kernel() else {
        return;
    };
    let Some(modules) = env_path(
        "NOOK_TEST_MODULES",
        "the kernel's lib/modules/<release> directory",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    let script = format!("{INIT_PRELUDE}{ECHO_INIT}");
    std::fs::write(&initrd, busybox_initramfs(&modules, &script).unwrap()).unwrap();
    let disk = dir.path().join("disk.raw");
    let mut image = b"NOOKDISK".to_vec();
    image.resize(1 << 20, 0);
    std::fs::write(&disk, image).unwrap();

    let mut cfg = tcg_config(&qemu, &kernel, dir.path());
    cfg.initrd = Some(initrd);
    cfg.disks.push(QemuDiskConfig::new(&disk, true));
    let started = Instant::now();
    let mut vm = QemuVm::start(cfg).unwrap();
    let spawn_time = started.elapsed();
    let channel = vm.take_agent_channel().expect("agent channel");
    assert!(vm.take_agent_channel().is_none(), "channel is taken once");
    channel.set_read_timeout(Some(BOOT_TIMEOUT)).unwrap();
    let mut writer = channel.try_clone().unwrap();
    let mut reader = BufReader::new(channel);

    let mut line = String::new();
    let n = reader.read_line(&mut line).unwrap_or(0);
    if n == 0 {
        panic!("{}", vm.boot_failure(started.elapsed()));
    }
    let first_line = started.elapsed();
    assert!(line.starts_with("hello from guest "), "got {line:?}");

    // QMP works on a running guest, negotiated only now.
    let status = vm.qmp_execute("query-status", None).unwrap();
    assert_eq!(status["status"], "running", "{status}");
    assert_eq!(status["running"], true);

    writer.write_all(b"ping 42\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "echo: ping 42\n");
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "disk: NOOKDISK ro=1\n");

    let status = vm
        .wait_timeout(BOOT_TIMEOUT)
        .unwrap()
        .unwrap_or_else(|| panic!("{}", vm.boot_failure(started.elapsed())));
    let total = started.elapsed();
    assert!(
        status.success(),
        "guest poweroff exits qemu cleanly: {status}"
    );
    // The guest's end closed with QEMU.
    line.clear();
    assert_eq!(reader.read_line(&mut line).unwrap(), 0);

    let console = std::fs::read_to_string(vm.console_log()).unwrap();
    assert!(console.contains("Linux version"), "{console}");
    assert!(vm.console_tail(5).contains("nook-test: done"));
    assert!(
        vm.console_tail(1).lines().count() == 1,
        "tail is limited to the requested lines"
    );
    eprintln!(
        "timing: spawn {spawn_time:?}, first agent line {first_line:?}, \
         boot to poweroff {total:?}"
    );
}

#[test]
fn given_initrd_boots_and_quits_over_qmp() {
    let Some((qemu, kernel)) = qemu_and_kernel() else {
        return;
    };
    let Some(initrd) = env_path("NOOK_TEST_INITRD", "an initramfs for that kernel") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tcg_config(&qemu, &kernel, dir.path());
    cfg.initrd = Some(initrd);
    let started = Instant::now();
    let mut vm = QemuVm::start(cfg).unwrap();
    // Wait for the kernel banner on the console.
    while !std::fs::read_to_string(vm.console_log())
        .unwrap_or_default()
        .contains("Linux version")
    {
        if started.elapsed() > BOOT_TIMEOUT || vm.try_wait().unwrap().is_some() {
            panic!("{}", vm.boot_failure(started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = vm.shutdown(Duration::from_secs(10)).unwrap();
    // Both a QMP quit and a guest that powered off by itself exit with 0; a
    // kill would show as a signal.
    assert!(status.success(), "{status}");
}
