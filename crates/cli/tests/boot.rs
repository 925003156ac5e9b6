//! `nook boot` with synthetic guests: tiny PVH ELF files (entered in 32-bit
//! protected mode by both engines) that print a byte on COM1 and then end
//! the machine one way or another. They take milliseconds on kvm and well
//! under a second on qemu, even where guest ring 0 is emulated.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where the guest is loaded and entered.
const LOAD: u32 = 0x10_0000;

/// `mov edx, 0x3f8; mov al, b; out dx, al`.
fn print(b: u8) -> Vec<u8> {
    vec![0xba, 0xf8, 0x03, 0x00, 0x00, 0xb0, b, 0xee]
}

/// i8042 reset (`out 0x64, 0xfe`); QEMU's microvm has no i8042, so a
/// triple fault follows (`ud2` with no IDT), which QEMU reports as a reset.
fn reset() -> Vec<u8> {
    vec![0xb0, 0xfe, 0xe6, 0x64, 0x0f, 0x0b]
}

/// `ud2` with no usable IDT: #UD, #GP, #DF, shutdown.
fn triple_fault() -> Vec<u8> {
    vec![0x0f, 0x0b]
}

/// ACPI S5 on nook's sleep control port, then `hlt` forever.
fn poweroff() -> Vec<u8> {
    vec![
        0xba, 0x00, 0x06, 0x00, 0x00, 0xb0, 0x34, 0xee, 0xf4, 0xeb, 0xfd,
    ]
}

/// `hlt` forever with interrupts off.
fn hang() -> Vec<u8> {
    vec![0xfa, 0xf4, 0xeb, 0xfd]
}

/// A 64-bit ELF with one PT_LOAD (`code` at [`LOAD`]) and a PT_NOTE holding
/// the Xen PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY` = [`LOAD`]).
fn pvh_elf(code: &[u8]) -> Vec<u8> {
    let mut note = Vec::new();
    for v in [4u32, 4, 18] {
        note.extend_from_slice(&v.to_le_bytes());
    }
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&LOAD.to_le_bytes());
    let code_off = 0x40 + 2 * 0x38;
    let note_off = code_off + code.len();
    let mut e = vec![0u8; 0x40];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // ELFCLASS64
    e[5] = 1; // little endian
    e[6] = 1;
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&u64::from(LOAD).to_le_bytes());
    e[32..40].copy_from_slice(&0x40u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&0x40u16.to_le_bytes());
    e[54..56].copy_from_slice(&0x38u16.to_le_bytes());
    e[56..58].copy_from_slice(&2u16.to_le_bytes());
    let ph = |kind: u32, off: usize, addr: u64, len: usize| {
        let mut p = vec![0u8; 0x38];
        p[0..4].copy_from_slice(&kind.to_le_bytes());
        p[4..8].copy_from_slice(&7u32.to_le_bytes());
        p[8..16].copy_from_slice(&(off as u64).to_le_bytes());
        p[16..24].copy_from_slice(&addr.to_le_bytes());
        p[24..32].copy_from_slice(&addr.to_le_bytes());
        p[32..40].copy_from_slice(&(len as u64).to_le_bytes());
        p[40..48].copy_from_slice(&(len as u64).to_le_bytes());
        p[48..56].copy_from_slice(&4u64.to_le_bytes());
        p
    };
    e.extend(ph(1, code_off, u64::from(LOAD), code.len())); // PT_LOAD
    e.extend(ph(4, note_off, 0, note.len())); // PT_NOTE
    e.extend_from_slice(code);
    e.extend_from_slice(&note);
    e
}

fn write_guest(dir: &Path, name: &str, parts: &[Vec<u8>]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pvh_elf(&parts.concat())).unwrap();
    path
}

fn nook_boot(kernel: &Path, engine: &str, extra: &[&str]) -> Output {
    nook_boot_in(Path::new("."), kernel, engine, extra)
}

/// `nook boot` run in the working directory `cwd`.
fn nook_boot_in(cwd: &Path, kernel: &Path, engine: &str, extra: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nook"))
        .current_dir(cwd)
        .env_remove("NOOK_LOG")
        .env("NOOK_HOME", home.path())
        .arg("boot")
        .arg("--kernel")
        .arg(kernel)
        .args(["--memory", "128", "--engine", engine])
        .args(if extra.contains(&"--timeout") {
            &[][..]
        } else {
            &["--timeout", "60"][..]
        })
        .args(extra)
        .output()
        .unwrap();
    eprintln!(
        "nook boot --engine {engine} {}: {:?}, stdout {:?}, stderr {}",
        kernel.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn kvm_or_skip() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping: /dev/kvm is not usable: {e}");
            false
        }
    }
}

fn qemu_or_skip() -> bool {
    let qemu = std::env::var_os("NOOK_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into());
    match Command::new(&qemu).arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!("skipping: {} is not installed", qemu.to_string_lossy());
            false
        }
    }
}

#[test]
fn reset_guest_prints_its_byte_and_exits_3_on_kvm() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exit_elf = write_guest(dir.path(), "exit.elf", &[print(b'R'), reset()]);
    let out = nook_boot(&exit_elf, "kvm", &[]);
    assert_eq!(out.stdout, b"R");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn reset_guest_prints_its_byte_and_exits_3_on_qemu() {
    if !qemu_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exit_elf = write_guest(dir.path(), "exit.elf", &[print(b'R'), reset()]);
    let out = nook_boot(&exit_elf, "qemu", &[]);
    assert_eq!(out.stdout, b"R");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn a_relative_kernel_path_means_the_callers_directory_on_qemu() {
    if !qemu_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_guest(dir.path(), "exit.elf", &[print(b'R'), reset()]);
    // QEMU runs in its own run directory: the path must not be read there.
    let out = nook_boot_in(dir.path(), Path::new("exit.elf"), "qemu", &[]);
    assert_eq!(out.stdout, b"R");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn triple_fault_exits_4_and_poweroff_exits_0_on_kvm() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tf = write_guest(dir.path(), "tf.elf", &[print(b'T'), triple_fault()]);
    let out = nook_boot(&tf, "kvm", &[]);
    assert_eq!(out.stdout, b"T");
    assert_eq!(out.status.code(), Some(4));
    let off = write_guest(
        dir.path(),
        "off.elf",
        &[print(b'O'), print(b'\n'), poweroff()],
    );
    let out = nook_boot(&off, "kvm", &[]);
    assert_eq!(out.stdout, b"O\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_guest_that_never_ends_is_stopped_by_the_timeout_with_124() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let h = write_guest(dir.path(), "hang.elf", &[print(b'H'), hang()]);
    let out = nook_boot(&h, "kvm", &["--timeout", "0.3"]);
    assert_eq!(out.stdout, b"H");
    assert_eq!(out.status.code(), Some(124));
}

#[test]
fn a_missing_kernel_fails_with_125_and_says_why() {
    if !kvm_or_skip() {
        return;
    }
    let out = nook_boot(Path::new("/nonexistent/kernel"), "kvm", &[]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/kernel"), "{err}");
}
