//! The interpreter on a test back end that runs programs on the host in
//! the workspace directory (no isolation: tests only).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::*;
use crate::backend::{Backend, GuestCommand, GuestStdin};
use crate::error::ShellError;
use crate::hostfs::HostFs;
use crate::workspace::WorkspaceFs;

struct LocalBackend {
    fs: HostFs,
    root: PathBuf,
}

impl Backend for LocalBackend {
    fn name(&self) -> &str {
        "test"
    }
    fn guest_root(&self) -> &str {
        "/workspace"
    }
    fn fs(&mut self) -> &mut dyn WorkspaceFs {
        &mut self.fs
    }
    fn exec(
        &mut self,
        cmd: &GuestCommand,
        stdin: GuestStdin,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<i32, ShellError> {
        let rel = cmd.cwd.strip_prefix("/workspace").unwrap_or("");
        let cwd = self.root.join(rel.trim_start_matches('/'));
        let mut child = match Command::new(&cmd.argv[0])
            .args(&cmd.argv[1..])
            .envs(cmd.env.iter().cloned())
            .current_dir(&cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(_) => {
                let _ = writeln!(stderr, "{}: command not found", cmd.argv[0]);
                return Ok(127);
            }
        };
        let input = match stdin {
            GuestStdin::Bytes(b) => b,
            GuestStdin::Shell => Vec::new(),
        };
        let mut child_in = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            let _ = child_in.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        stdout.write_all(&out.stdout).unwrap();
        stderr.write_all(&out.stderr).unwrap();
        Ok(out.status.code().unwrap_or(128))
    }
    fn shutdown(&mut self) -> Result<(), ShellError> {
        Ok(())
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    shell: Shell,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend {
        fs: HostFs::open(dir.path()).unwrap(),
        root: dir.path().to_path_buf(),
    };
    let shell = Shell::new(Box::new(backend), Arc::new(AtomicUsize::new(0)));
    Fixture { dir, shell }
}

impl Fixture {
    /// Runs `src` with stdout and stderr captured: (flow, stdout, stderr).
    fn run(&mut self, src: &str) -> (Flow, String, String) {
        let list = parse(src).unwrap();
        let io = Io {
            stdin: Some(Rc::new(Vec::new())),
            stdout: Sink::buffer(),
            stderr: Sink::buffer(),
        };
        let flow = self.shell.run_list(&list, &io, false);
        (
            flow,
            String::from_utf8(io.stdout.take()).unwrap(),
            String::from_utf8(io.stderr.take()).unwrap(),
        )
    }

    fn out(&mut self, src: &str) -> String {
        self.run(src).1
    }

    fn file(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join(rel)).ok()
    }
}

#[test]
fn redirects_and_a_pipeline_mixing_builtins_and_programs() {
    let mut f = fixture();
    assert_eq!(f.out("echo hi > a.txt && cat a.txt | tr a-z A-Z"), "HI\n");
    assert_eq!(f.file("a.txt").as_deref(), Some("hi\n"));
    f.out("echo more >> a.txt");
    assert_eq!(f.file("a.txt").as_deref(), Some("hi\nmore\n"));
    // Programs feed builtins, and several programs stream into each other.
    assert_eq!(f.out("printf 'b\\na\\n' | sort | cat"), "a\nb\n");
    assert_eq!(f.out("tr a-z A-Z < a.txt | head -1"), "HI\n");
    let (_, out, err) = f.run("sh -c 'echo out; echo err >&2' 2> e.txt");
    assert_eq!((out.as_str(), err.as_str()), ("out\n", ""));
    assert_eq!(f.file("e.txt").as_deref(), Some("err\n"));
    let (_, out, _) = f.run("sh -c 'echo err >&2' 2>&1 | tr a-z A-Z");
    assert_eq!(out, "ERR\n");
}

#[test]
fn and_or_lists_and_status() {
    let mut f = fixture();
    assert_eq!(f.out("false && echo no || echo yes"), "yes\n");
    assert_eq!(f.out("true; echo $?; false; echo $?"), "0\n1\n");
    assert_eq!(f.out("! false && echo negated"), "negated\n");
    let (_, _, err) = f.run("no-such-program-xyz");
    assert!(err.contains("not found"), "{err}");
    assert_eq!(f.shell.status(), 127);
}

#[test]
fn variables_quotes_and_globs() {
    let mut f = fixture();
    assert_eq!(
        f.out("X='a  b'; echo $X \"$X\" '$X' ${X}c"),
        "a b a  b $X a bc\n"
    );
    f.out("touch one.rs two.rs three.txt");
    assert_eq!(f.out("echo *.rs"), "one.rs two.rs\n");
    assert_eq!(f.out("echo '*.rs' *.none"), "*.rs *.none\n");
    // Exported variables reach programs; plain ones do not.
    assert_eq!(f.out("export A=1; B=2; sh -c 'echo $A-$B'"), "1-\n");
    assert_eq!(f.out("C=3 sh -c 'echo $C'"), "3\n");
    f.out("unset A");
    assert_eq!(f.out("sh -c 'echo x$A'"), "x\n");
}

#[test]
fn compound_commands_and_functions() {
    let mut f = fixture();
    let src =
        "greet() {\n  echo \"hi $1\"\n  return 3\n}\nfor n in a b; do greet $n; done\necho $?\n\
               i=0\nwhile [ $i != 2 ]; do i=2; done\n\
               if false; then echo 1; elif true; then echo 2; else echo 3; fi\n";
    let (flow, out, err) = f.run(src);
    assert_eq!(flow, Flow::Next, "{err}");
    assert_eq!(out, "hi a\nhi b\n3\n2\n");
    assert_eq!(
        f.out("for x in 1 2 3; do if [ $x = 2 ]; then break; fi; echo $x; done"),
        "1\n"
    );
    assert_eq!(
        f.out("for x in 1 2 3; do [ $x = 2 ] && continue; echo $x; done"),
        "1\n3\n"
    );
}

#[test]
fn set_e_stops_at_the_failing_command_with_its_code() {
    let mut f = fixture();
    let src = "set -e\nNAME=world\nsay() { echo \"hello $NAME $1\"; }\n\
               for i in 1 2; do say $i; done\n\
               if false; then echo no; fi\nfalse || true\n\
               sh -c 'exit 7'\necho not reached\n";
    let (flow, out, _) = f.run(src);
    assert_eq!(flow, Flow::Exit(7));
    assert_eq!(out, "hello world 1\nhello world 2\n");
}

#[test]
fn builtins_act_on_the_workspace_only() {
    let mut f = fixture();
    assert_eq!(f.out("mkdir -p demo/x && cd demo && pwd"), "/demo\n");
    let (_, _, err) = f.run("cd ../..");
    assert!(err.contains("outside the workspace"), "{err}");
    assert_eq!(f.out("pwd"), "/demo\n");
    f.out("cd /; echo a > f; cp f g; mv g h; ls");
    assert_eq!(f.out("ls"), "demo/\nf\nh\n");
    assert_eq!(f.out("cat /workspace/h"), "a\n");
    f.out("cp -r demo demo2; rm -r demo; command rm f");
    assert_eq!(f.out("ls"), "demo2/\nh\n");
    let (_, _, err) = f.run("cat ../etc/passwd");
    assert!(err.contains("outside the workspace"), "{err}");
    let (_, _, err) = f.run("echo x > ../y");
    assert!(err.contains("outside the workspace"), "{err}");
    // Programs run in the matching directory.
    assert_eq!(
        f.out("cd demo2/x && pwd && sh -c pwd"),
        format!(
            "/demo2/x\n{}\n",
            f.dir
                .path()
                .join("demo2/x")
                .canonicalize()
                .unwrap()
                .display()
        )
    );
}

#[test]
fn source_runs_a_file_in_this_shell() {
    let mut f = fixture();
    std::fs::write(
        f.dir.path().join("lib.nsh"),
        "LIBVAR=\"$1\"\nlibfn() { echo lib $LIBVAR; }\n",
    )
    .unwrap();
    assert_eq!(
        f.out("source lib.nsh arg; libfn; . lib.nsh two; libfn"),
        "lib arg\nlib two\n"
    );
    std::fs::write(f.dir.path().join("bad.nsh"), "echo a\nif true\n").unwrap();
    let (_, _, err) = f.run("source bad.nsh");
    assert!(err.contains("bad.nsh: line 2"), "{err}");
}

#[test]
fn exit_and_help() {
    let mut f = fixture();
    assert_eq!(f.run("exit 4; echo no").0, Flow::Exit(4));
    assert!(f.out("help").contains("cd [DIR]"));
    assert_eq!(f.out("export Z=1; env"), "Z=1\n");
}
