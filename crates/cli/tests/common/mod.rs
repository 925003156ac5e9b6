//! What the CLI's end-to-end tests share: the `nook` command under test,
//! the skip check, and output helpers.
#![allow(dead_code)]

pub mod mcp;

use std::process::{Command, Stdio};

pub mod daemon;

/// The `nook` binary under test, with stdin closed and logging at default.
pub fn nook() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nook"));
    c.env_remove("NOOK_LOG").stdin(Stdio::null());
    c
}

/// `nook ARGS` started with stdout and stderr piped and the given stdin.
pub fn spawn(args: &[&str], stdin: Stdio) -> std::process::Child {
    nook()
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nook")
}

/// Whether real guests can run here; prints why not and returns false.
pub fn ready() -> bool {
    let agent_ok = std::env::var_os("NOOK_AGENT")
        .map(|p| std::path::Path::new(&p).is_file())
        .unwrap_or(false);
    if !agent_ok {
        eprintln!("skipping: NOOK_AGENT is not set to a built agent (run scripts/test, or scripts/setup and export NOOK_AGENT)");
        return false;
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: qemu-system-x86_64 is not installed (run scripts/setup)");
        return false;
    }
    true
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The stdout of a successful run; fails the test with stderr otherwise.
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "nook failed ({:?}): {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// How a `NOOK_LOG=debug` log says the VM started: restored from a
/// template (`Some((true, KEY))`), booted and made one or found it made by
/// another nook meanwhile (`Some((false, KEY))`), or neither (`None`:
/// booted with no template).
pub fn template_key(stderr: &str) -> Option<(bool, String)> {
    for (marker, restored) in [("restored from template ", true), ("made template ", false)] {
        if let Some(i) = stderr.find(marker) {
            let key = stderr[i + marker.len()..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect();
            return Some((restored, key));
        }
    }
    None
}

/// QEMU processes started on behalf of the nook process `pid` (their
/// command line names the run directory `nook-PID-N`).
pub fn qemu_of(pid: u32) -> Vec<String> {
    let needle = format!("nook-{pid}-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = text(&cmdline).replace('\0', " ");
        if cmdline.contains("qemu-system") && cmdline.contains(&needle) {
            found.push(format!(
                "{}: {}",
                entry.file_name().to_string_lossy(),
                cmdline
            ));
        }
    }
    found
}

/// Names in `dir` that contain `needle` (none when `dir` is missing).
pub fn names_with(dir: &std::path::Path, needle: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(needle))
        .collect()
}

/// Whether mmdebstrap is installed; prints why not.
pub fn have_mmdebstrap() -> bool {
    let ok = Command::new("mmdebstrap").arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipping: mmdebstrap is not installed (apt-get install mmdebstrap)");
    }
    ok
}

/// The output of `nook ARGS` (stdin closed), whatever its status.
pub fn nook_out(args: &[&str]) -> std::process::Output {
    nook().args(args).output().expect("run nook")
}

/// Whether the desktop image can be built or is there (the end-to-end
/// prerequisites, `NOOK_TEST_DEBIAN_IMAGE` or `NOOK_SLOW_TESTS`, and
/// mmdebstrap); prints why not.
pub fn desktop_ready() -> bool {
    if !ready() {
        return false;
    }
    if std::env::var_os("NOOK_TEST_DEBIAN_IMAGE").is_none()
        && std::env::var_os("NOOK_SLOW_TESTS").is_none()
    {
        eprintln!("skipping: set NOOK_TEST_DEBIAN_IMAGE=1 to build the desktop image (a few minutes once, needs a Debian mirror)");
        return false;
    }
    have_mmdebstrap()
}

/// Decodes an 8-bit RGB PNG (a desktop screenshot): width, height, pixels.
pub fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut r = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("a PNG");
    let mut buf = vec![0; r.output_buffer_size().expect("a size")];
    let info = r.next_frame(&mut buf).expect("a frame");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}
