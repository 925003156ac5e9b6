//! `nook shell` end to end on real guests (the qemu engine under TCG
//! here), driven through a pseudo-terminal the way a person types: the
//! prompt while the VM boots, builtins and guest programs in one pipeline,
//! the live workspace share (deletions included), Ctrl-C, `exit`, writes
//! outside the workspace, `set -e` scripts and a Rust project.

mod common;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{qemu_of, ready, text};

/// A `nook shell` on a pseudo-terminal (its controlling terminal).
struct PtyShell {
    child: Child,
    /// Its workspace (to remove its session if a test fails midway).
    workspace: std::path::PathBuf,
    master: std::fs::File,
    output: Arc<Mutex<Vec<u8>>>,
    /// How much of `output` the last `expect` consumed.
    seen: usize,
}

impl PtyShell {
    fn start(workspace: &Path, extra: &[&str]) -> PtyShell {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master: OwnedFd = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().expect("pts name"))
            .expect("open the pty's terminal side");
        rustix::termios::tcsetwinsize(
            &slave,
            rustix::termios::Winsize {
                ws_row: 40,
                ws_col: 120,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .expect("window size");
        // setsid -c: a session of its own with the pty as controlling
        // terminal, so Ctrl-C reaches it as a person's would.
        let child = Command::new("setsid")
            .arg("-c")
            .arg(env!("CARGO_BIN_EXE_nook"))
            .arg("shell")
            .arg(workspace)
            .arg("--fresh")
            .args(extra)
            .env("TERM", "xterm")
            .env_remove("NOOK_LOG")
            .stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("start nook shell");
        let master = std::fs::File::from(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        {
            let output = output.clone();
            let mut reader = master.try_clone().expect("dup master");
            let mut answer = master.try_clone().expect("dup master");
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    // Answer cursor position queries as a terminal would.
                    if buf[..n].windows(4).any(|w| w == b"\x1b[6n") {
                        let _ = answer.write_all(b"\x1b[1;1R");
                    }
                    output.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        PtyShell {
            child,
            workspace: workspace.to_path_buf(),
            master,
            output,
            seen: 0,
        }
    }

    fn send(&mut self, s: &str) {
        self.master
            .write_all(s.as_bytes())
            .expect("write to the pty");
    }

    /// Types `line` and Enter.
    fn line(&mut self, line: &str) {
        self.send(line);
        self.send("\r");
    }

    /// Waits until `needle` appears in new output; returns the output up
    /// to and including it.
    fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let out = self.output.lock().unwrap();
                let fresh = text(&out[self.seen..]);
                if let Some(i) = fresh.find(needle) {
                    let upto = fresh[..i + needle.len()].to_string();
                    self.seen += upto.len();
                    return upto;
                }
            }
            if Instant::now() > deadline {
                let out = self.output.lock().unwrap();
                panic!(
                    "`{needle}` did not appear in {timeout:?}; output since the last match:\n{}",
                    text(&out[self.seen..])
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the shell to exit; its exit code.
    fn wait(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("nook shell did not exit in {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PtyShell {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            // A killed shell leaves its (detached) session running.
            if let Some((name, _)) = shell_session(&self.workspace) {
                let _ = common::nook().args(["rm", "-f", &name]).output();
            }
        }
    }
}

/// The shell's session for `workspace` as `nook ps --json` shows it:
/// (name, host pid).
fn shell_session(pattern_dir: &Path) -> Option<(String, u32)> {
    let out = common::nook().args(["ps", "-a", "--json"]).output().ok()?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let key = nook_shell::resume::workspace_key(&pattern_dir.canonicalize().ok()?);
    list.as_array()?.iter().find_map(|s| {
        let name = s["name"].as_str()?;
        let pid = s["pid"].as_u64()? as u32;
        (name == format!("shell-{}", &key[..12]) && s["state"] == "running")
            .then(|| (name.to_string(), pid))
    })
}

const BOOT: Duration = Duration::from_secs(120);

/// Whether the tests that need the Rust toolchain image run: scripts/test
/// (and so CI) sets NOOK_TEST_DEBIAN_IMAGE; the image takes a couple of
/// minutes to build the first time on a machine and is cached afterwards.
fn rust_image_ready() -> bool {
    if std::env::var_os("NOOK_TEST_DEBIAN_IMAGE").is_none()
        && std::env::var_os("NOOK_SLOW_TESTS").is_none()
    {
        eprintln!("skipping: set NOOK_TEST_DEBIAN_IMAGE=1 to use the Rust toolchain image (minutes the first time, needs a Debian mirror)");
        return false;
    }
    ready()
}

#[test]
fn shell_on_a_pty_runs_builtins_and_guest_programs_over_a_live_workspace() {
    if !ready() {
        return;
    }
    let ws = tempfile::tempdir().expect("workspace");
    let unique = format!("nook-shelltest-{}", std::process::id());
    let started = Instant::now();
    let mut sh = PtyShell::start(ws.path(), &["--engine", "qemu"]);
    sh.expect("nook:vm /$ ", Duration::from_secs(10));
    let prompt_after = started.elapsed();
    // The VM is still booting: the prompt does not wait for it.
    assert!(
        prompt_after < Duration::from_millis(500),
        "the prompt took {prompt_after:?}"
    );

    // A builtin's output piped into a guest program (which waits for the boot).
    sh.line("echo hi > a.txt && cat a.txt | tr a-z A-Z");
    let out = sh.expect("nook:vm /$ ", BOOT);
    assert!(out.contains("HI\r\n"), "{out}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("a.txt")).unwrap(),
        "hi\n"
    );

    // The guest's rm (not the builtin) removes the host's file.
    sh.line("command rm a.txt; mkdir sub && cd sub && sh -c 'pwd; echo made > g.txt'");
    let out = sh.expect("nook:vm /sub$ ", BOOT);
    assert!(out.contains("/workspace/sub\r\n"), "{out}");
    assert!(!ws.path().join("a.txt").exists());
    assert_eq!(
        std::fs::read_to_string(ws.path().join("sub/g.txt")).unwrap(),
        "made\n"
    );

    // Writes outside the workspace stay in the guest.
    sh.line(&format!(
        "sh -c 'touch /etc/{unique} && echo x > /tmp/{unique} && ls /etc/{unique} /tmp/{unique}'; touch /etc/{unique}; echo x > /tmp/{unique}; cd /"
    ));
    let out = sh.expect("nook:vm /$ ", BOOT);
    assert!(
        out.contains(&format!("/tmp/{unique}")),
        "the guest wrote its own files: {out}"
    );
    assert!(!Path::new(&format!("/etc/{unique}")).exists());
    assert!(!Path::new(&format!("/tmp/{unique}")).exists());

    // Ctrl-C stops the guest command and the session serves the next one.
    sh.line("sleep 100");
    std::thread::sleep(Duration::from_secs(2));
    let pressed = Instant::now();
    sh.send("\x03");
    sh.expect("nook:vm /$ ", Duration::from_secs(10));
    let back = pressed.elapsed();
    assert!(
        back < Duration::from_secs(2),
        "back at the prompt after {back:?}"
    );
    sh.line("sh -c 'echo after-$((40+2))'");
    let out = sh.expect("nook:vm /$ ", BOOT);
    assert!(out.contains("after-42"), "{out}");

    let (_, host_pid) = shell_session(ws.path()).expect("the shell's session runs");
    sh.line("exit 3");
    assert_eq!(sh.wait(Duration::from_secs(60)), 3);
    assert!(
        !nook_serve::host_alive(host_pid),
        "the session host is still running"
    );
    let left = qemu_of(host_pid);
    assert!(left.is_empty(), "VM processes left: {left:?}");
    assert!(shell_session(ws.path()).is_none());
}

#[test]
fn shell_script_with_set_e_stops_at_the_failing_guest_command() {
    if !ready() {
        return;
    }
    let ws = tempfile::tempdir().expect("workspace");
    let script = ws.path().join("build.nsh");
    std::fs::write(
        &script,
        "# stops at the first failure\nset -e\nGREETING=hello\n\
         say() {\n  echo \"$GREETING $1\" >> log.txt\n}\n\
         for n in one two; do\n  say $n\ndone\n\
         sh -c 'cat log.txt; exit 7'\necho not reached >> log.txt\n",
    )
    .unwrap();
    let out = common::nook()
        .args(["shell", "--fresh", "--engine", "qemu", "-f"])
        .arg(&script)
        .arg(ws.path())
        .output()
        .expect("nook shell -f");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello one\nhello two\n");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("log.txt")).unwrap(),
        "hello one\nhello two\n"
    );

    // A parse error names the line and runs nothing.
    std::fs::write(
        &script,
        "echo ran > ran.txt\nif true; then\n  echo x\nfi fi\n",
    )
    .unwrap();
    let out = common::nook()
        .args(["shell", "--fresh", "--engine", "qemu", "-f"])
        .arg(&script)
        .arg(ws.path())
        .output()
        .expect("nook shell -f");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("line 4"),
        "{}",
        text(&out.stderr)
    );
    assert!(!ws.path().join("ran.txt").exists());
}

#[test]
fn shell_on_a_pty_builds_and_runs_a_cargo_project() {
    if !rust_image_ready() {
        return;
    }
    let ws = tempfile::tempdir().expect("workspace");
    let mut sh = PtyShell::start(ws.path(), &["--engine", "qemu"]);
    sh.expect("nook:vm /$ ", Duration::from_secs(10));
    sh.line("mkdir demo && cd demo");
    sh.expect("nook:vm /demo$ ", Duration::from_secs(10));
    // `cargo` with no image chosen moves the session to the Rust image.
    let started = Instant::now();
    sh.line("cargo new hello");
    let out = sh.expect("nook:vm /demo$ ", Duration::from_secs(600));
    assert!(
        out.contains("binary (application) `hello` package"),
        "{out}"
    );
    sh.line("cd hello");
    sh.expect("nook:vm /demo/hello$ ", Duration::from_secs(10));
    sh.line("cargo run");
    let out = sh.expect("nook:vm /demo/hello$ ", Duration::from_secs(600));
    eprintln!(
        "cargo new + cargo run: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(out.contains("Hello, world!"), "{out}");
    // Sync mode: what the guest built is in the host workspace.
    assert!(ws.path().join("demo/hello/target/debug/hello").is_file());
    assert!(ws.path().join("demo/hello/Cargo.lock").is_file());
    sh.line("exit");
    assert_eq!(sh.wait(Duration::from_secs(60)), 0);
    assert!(shell_session(ws.path()).is_none());
}

/// `nook shell --backend host ARGS` in `ws`: (exit code, stdout, stderr).
fn host_shell(ws: &Path, args: &[&str]) -> (i32, String, String) {
    let out = common::nook()
        .args(["shell", "--backend", "host"])
        .arg(ws)
        .args(args)
        .output()
        .expect("nook shell");
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

fn bwrap_missing() -> bool {
    let missing = Command::new("bwrap").arg("--version").output().is_err();
    if missing {
        eprintln!("skipping: bubblewrap is not installed (run scripts/setup)");
    }
    missing
}

#[test]
fn host_backend_confines_programs() {
    if bwrap_missing() {
        return;
    }
    let ws = tempfile::tempdir().expect("workspace");
    // Something in the host's /home the sandbox must not show.
    let marker = Path::new("/home").join(format!("nook-shelltest-{}", std::process::id()));
    let made = std::fs::create_dir_all(&marker).is_ok();
    let (code, out, err) = host_shell(
        ws.path(),
        &[
            "--fresh",
            "-c",
            "sh -c 'echo $$; ls /home; id -u'; sh -c 'cat /proc/net/dev' > net.txt; \
             sh -c 'touch /etc/nook-shelltest; echo x > /tmp/y; echo made > in-ws.txt'",
        ],
    );
    if made {
        let _ = std::fs::remove_dir(&marker);
    }
    assert!(
        err.contains("weaker isolation"),
        "it says so plainly: {err}"
    );
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let pid: u32 = lines.next().and_then(|l| l.parse().ok()).expect("a pid");
    assert!(pid < 10, "a pid of a fresh pid namespace, got {pid}");
    // /home is empty: the next line is the uid.
    assert!(
        lines.next().is_some_and(|l| l.parse::<u32>().is_ok()),
        "{out}"
    );
    assert_eq!(lines.next(), None, "{out}");
    // No network but loopback.
    let net = std::fs::read_to_string(ws.path().join("net.txt")).unwrap();
    let ifaces: Vec<&str> = net
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{net}");
    // Only the workspace is writable.
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!Path::new("/etc/nook-shelltest").exists());
    assert_eq!(
        std::fs::read_to_string(ws.path().join("in-ws.txt")).unwrap(),
        "made\n"
    );
}

#[test]
fn the_shell_resumes_where_it_left_off() {
    if bwrap_missing() {
        return;
    }
    let ws = tempfile::tempdir().expect("workspace");
    let (code, _, err) = host_shell(
        ws.path(),
        &[
            "--fresh",
            "-c",
            "mkdir -p a/b && cd a/b && export GREETING=hi",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = host_shell(
        ws.path(),
        &["-c", "pwd; echo $GREETING; sh -c 'pwd; echo $GREETING'"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "/a/b\nhi\n/workspace/a/b\nhi\n");
    let (_, out, _) = host_shell(ws.path(), &["--fresh", "-c", "pwd; echo x$GREETING"]);
    assert_eq!(out, "/\nx\n");
}

#[test]
fn sidecar_backend_runs_cargo_against_nook_serve() {
    if !rust_image_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("serve.sock");
    let ws = dir.path().join("project");
    std::fs::create_dir(&ws).unwrap();
    let mut serve = common::nook()
        .args(["serve", "--engine", "qemu", "--socket"])
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nook serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = common::nook()
        .args(["shell", "--fresh", "--backend", "sidecar", "--socket"])
        .arg(&socket)
        .arg(&ws)
        .args([
            "-c",
            "mkdir demo && cd demo && cargo new hello && cd hello && cargo run",
        ])
        .output()
        .expect("nook shell");
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(&serve),
        rustix::process::Signal::TERM,
    );
    let _ = serve.wait();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Hello, world!"),
        "{}",
        text(&out.stdout)
    );
    // Pulled back after each program.
    assert!(ws.join("demo/hello/Cargo.toml").is_file());
    assert!(ws.join("demo/hello/target/debug/hello").is_file());
}

#[test]
fn guest_primary_workspace_reaches_the_host_only_by_export() {
    if !rust_image_ready() {
        return;
    }
    let ws = tempfile::tempdir().expect("workspace");
    let out_dir = tempfile::tempdir().expect("export target");
    let mut sh = PtyShell::start(
        ws.path(),
        &["--engine", "qemu", "--workspace-mode", "guest"],
    );
    sh.expect("nook:vm /$ ", Duration::from_secs(10));
    sh.line("mkdir demo && cd demo");
    sh.expect("nook:vm /demo$ ", BOOT);
    sh.line("cargo new hello");
    let out = sh.expect("nook:vm /demo$ ", Duration::from_secs(600));
    assert!(
        out.contains("binary (application) `hello` package"),
        "{out}"
    );
    sh.line("cd hello");
    sh.expect("nook:vm /demo/hello$ ", Duration::from_secs(10));
    sh.line("cargo run");
    let out = sh.expect("nook:vm /demo/hello$ ", Duration::from_secs(600));
    assert!(out.contains("Hello, world!"), "{out}");
    // The workspace lives in the session: nothing on the host yet.
    assert!(!ws.path().join("demo").exists());
    sh.line(&format!("export {}", out_dir.path().display()));
    let out = sh.expect("nook:vm /demo/hello$ ", BOOT);
    assert!(out.contains("exported the workspace"), "{out}");
    assert!(out_dir
        .path()
        .join("demo/hello/target/debug/hello")
        .is_file());
    assert!(out_dir.path().join("demo/hello/src/main.rs").is_file());
    sh.line("exit");
    assert_eq!(sh.wait(Duration::from_secs(60)), 0);
    // The workspace volume outlives the shell; this test's goes.
    let key = nook_shell::resume::workspace_key(&ws.path().canonicalize().unwrap());
    let rm = common::nook()
        .args(["volume", "rm", &format!("shell-{}", &key[..12])])
        .output()
        .expect("nook volume rm");
    assert!(rm.status.success(), "{}", text(&rm.stderr));
}
