//! The C examples (examples/c) built with gcc against the libnook this
//! build made, shared and static, and run against real guests on the qemu
//! engine: their output is checked line by line.
//!
//! Needs what the other end-to-end tests need (NOOK_AGENT, qemu) plus gcc
//! and a `nook` binary to host sessions (NOOK_BIN, else the newest of
//! target/{release,debug}/nook); skips with the reason otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// target/debug (or release): where cargo put this test's profile.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/debug/deps/c_examples-HASH
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// target/debug/deps: where cargo builds libnook.so and libnook.a as this
/// test's dependency (it uplifts them to target/debug only for a build of
/// the crate itself, so the copies there may be stale).
fn lib_dir() -> PathBuf {
    target_dir().join("deps")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `nook` binary that hosts sessions.
fn nook_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("NOOK_BIN") {
        return Some(PathBuf::from(bin));
    }
    let target = target_dir();
    let root = target.parent()?;
    ["release", "debug"]
        .iter()
        .map(|p| root.join(p).join("nook"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// Whether the examples can run here; prints why not.
fn ready() -> Option<PathBuf> {
    let agent_ok = std::env::var_os("NOOK_AGENT").is_some_and(|p| Path::new(&p).is_file());
    if !agent_ok {
        eprintln!("skipping: NOOK_AGENT is not set to a built agent (run scripts/test, or scripts/setup and export NOOK_AGENT)");
        return None;
    }
    for tool in ["qemu-system-x86_64", "gcc"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("skipping: {tool} is not installed");
            return None;
        }
    }
    let bin = nook_bin();
    if bin.is_none() {
        eprintln!(
            "skipping: no nook binary to host sessions (cargo build -p nook-cli, or set NOOK_BIN)"
        );
    }
    bin
}

/// Compiles example `name` (examples/c, else tests/c) into `out_dir`, linked against libnook.so
/// (found through an rpath) or, with `static_link`, libnook.a.
fn build(name: &str, out_dir: &Path, static_link: bool) -> PathBuf {
    let lib = lib_dir();
    let examples = repo_root().join("examples/c").join(format!("{name}.c"));
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(format!("{name}.c"));
    let src = if examples.is_file() { examples } else { tests };
    let exe = out_dir.join(if static_link {
        format!("{name}-static")
    } else {
        name.to_string()
    });
    let mut gcc = Command::new("gcc");
    gcc.arg(format!(
        "-I{}",
        repo_root().join("crates/capi/include").display()
    ))
    .args(["-Wall", "-Wextra", "-Werror", "-O2", "-o"])
    .arg(&exe)
    .arg(&src);
    if static_link {
        gcc.arg(lib.join("libnook.a")).args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ]);
    } else {
        gcc.arg(format!("-L{}", lib.display()))
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-lnook")
            .arg("-pthread");
    }
    let out = gcc.output().expect("run gcc");
    assert!(
        out.status.success(),
        "gcc {name}.c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn run(exe: &Path, args: &[&str], nook: &Path) -> Output {
    Command::new(exe)
        .args(args)
        .env("NOOK_BIN", nook)
        .env_remove("NOOK_LOG")
        .output()
        .expect("run the example")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Removes what a failed run may leave behind.
struct Cleanup<'a>(&'a Path, Vec<String>);
impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for name in &self.1 {
            let _ = Command::new(self.0).args(["rm", "-f", name]).output();
        }
    }
}

#[test]
fn run_example_prints_the_guest_command_output_shared_and_static() {
    let Some(nook) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let shared = build("run", dir.path(), false);
    let statik = build("run", dir.path(), true);

    // The default command: the guest kernel's release.
    let out = run(&shared, &["--engine", "qemu"], &nook);
    assert!(out.status.success(), "run: {}", text(&out.stderr));
    let release = text(&out.stdout);
    let first = release.trim_end().split('-').next().unwrap_or_default();
    assert!(
        release.ends_with('\n')
            && release.lines().count() == 1
            && first.split('.').count() == 3
            && first.split('.').all(|n| n.parse::<u32>().is_ok()),
        "not a kernel release: {release:?}"
    );

    // Output, stderr and the exit code pass through untouched.
    let out = run(
        &shared,
        &[
            "--engine",
            "qemu",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        &nook,
    );
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(3));

    // The same from the static library.
    let out = run(
        &statik,
        &["--engine", "qemu", "--", "echo", "hello from libnook.a"],
        &nook,
    );
    assert!(out.status.success(), "run-static: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from libnook.a\n");
}

#[test]
fn session_example_execs_copies_snapshots_and_restores() {
    let Some(nook) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let exe = build("session", dir.path(), false);
    let name = format!("capi{}-session", std::process::id());
    let _cleanup = Cleanup(&nook, vec![name.clone(), format!("{name}-clone")]);
    let out = run(&exe, &["--engine", "qemu", &name], &nook);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "session example failed: {}\n{stdout}",
        text(&out.stderr)
    );
    let want = format!(
        "started {name}\n\
         exec: hello from c\n\
         stdin: piped in\n\
         stream: 1\n2\n3\n\
         stream exit: 7\n\
         copied in 14 bytes\n\
         copied out: from the host\n\
         copied out: and the guest\n\
         snapshot {name}-snap\n\
         clone: from the host\n\
         and the guest\n\
         run from snapshot: from the host\n\
         exec after stop: NOOK_ERR_NOT_RUNNING: session `{name}` is not running (see `nook ps -a`)\n"
    );
    // Streamed pieces may arrive split: compare without the stream prefixes.
    let unprefixed = |s: &str| s.replace("stream: ", "");
    assert_eq!(unprefixed(&stdout), unprefixed(&want), "{stdout}");
    assert!(stdout.contains("stream: 1"), "{stdout}");
}

#[test]
fn error_paths_return_statuses_with_messages_and_never_abort() {
    let Some(nook) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let exe = build("errors", dir.path(), false);
    let name = format!("capi{}-errors", std::process::id());
    let _cleanup = Cleanup(&nook, vec![name.clone()]);
    let out = run(&exe, &["--engine", "qemu", &name], &nook);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "errors example failed ({:?}): {}\n{stdout}",
        out.status,
        text(&out.stderr)
    );
    let not_running = format!("session `{name}` is not running");
    let cases: [(&str, &str, &str); 17] = [
        ("bad-image", "NOOK_ERR_IMAGE", "invalid image reference"),
        ("absent-image", "NOOK_ERR_IMAGE", "nook-capi-absent"),
        (
            "null-out",
            "NOOK_ERR_INVALID_ARGUMENT",
            "out is a null pointer",
        ),
        (
            "null-session",
            "NOOK_ERR_INVALID_ARGUMENT",
            "session is a null pointer",
        ),
        (
            "null-name",
            "NOOK_ERR_INVALID_ARGUMENT",
            "name is a null pointer",
        ),
        (
            "unknown-session",
            "NOOK_ERR_NOT_FOUND",
            "no session named `capi-no-such-session`",
        ),
        (
            "bad-session-name",
            "NOOK_ERR_INVALID_ARGUMENT",
            "invalid session name",
        ),
        (
            "unknown-snapshot",
            "NOOK_ERR_NOT_FOUND",
            "no snapshot named `capi-no-such-snapshot`",
        ),
        (
            "timeout",
            "NOOK_ERR_TIMEOUT",
            "the command timed out and was killed (exit 124, timed_out 1, stdout 8 bytes)",
        ),
        ("no-program", "NOOK_ERR_NOT_FOUND", "/no/such/program"),
        ("stop", "NOOK_OK", ""),
        ("exec-stopped", "NOOK_ERR_NOT_RUNNING", &not_running),
        ("copy-stopped", "NOOK_ERR_NOT_RUNNING", &not_running),
        ("snapshot-stopped", "NOOK_ERR_NOT_RUNNING", &not_running),
        ("open-stopped", "NOOK_ERR_NOT_RUNNING", &not_running),
        ("remove", "NOOK_OK", ""),
        ("remove-again", "NOOK_ERR_NOT_FOUND", "no session named"),
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), cases.len(), "one line per case:\n{stdout}");
    for ((case, status, message), line) in cases.iter().zip(lines) {
        let prefix = format!("{case} {status}: ");
        assert!(
            line.starts_with(&prefix) && line.contains(message),
            "case {case}: expected `{prefix}...{message}...`, got `{line}`\n{stdout}"
        );
    }
}

#[test]
fn one_session_handle_serves_several_threads_each_with_its_own_last_error() {
    let Some(nook) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let exe = build("threads", dir.path(), false);
    let name = format!("capi{}-threads", std::process::id());
    let _cleanup = Cleanup(&nook, vec![name.clone()]);
    let out = run(&exe, &["--engine", "qemu", &name], &nook);
    let want: String = (0..4)
        .map(|i| format!("thread {i}: 5/5 execs ok, own error ok\n"))
        .collect();
    assert_eq!(text(&out.stdout), want, "stderr:\n{}", text(&out.stderr));
    assert!(out.status.success());
}
