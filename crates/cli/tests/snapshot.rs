//! `nook snapshot create|ls|rm` and `nook run --snapshot`, on real guests.

mod common;
use common::{nook, ready, text};

#[test]
fn create_run_list_remove() {
    if !ready() {
        return;
    }
    let name = format!("warm-test-{}", std::process::id());
    let out = nook()
        .args([
            "snapshot",
            "create",
            &name,
            "--",
            "sh",
            "-c",
            "echo warmed-up > /root/warm",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "create: {}", text(&out.stderr));

    let out = nook()
        .args(["run", "--snapshot", &name, "--", "echo", "hi"])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "hi\n", "stderr: {}", text(&out.stderr));
    // The warm-up's state is in the snapshot.
    let out = nook()
        .args(["run", "--snapshot", &name, "--", "cat", "/root/warm"])
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "warmed-up\n",
        "stderr: {}",
        text(&out.stderr)
    );

    let out = nook().args(["snapshot", "ls"]).output().unwrap();
    assert!(text(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name.as_str())));
    let out = nook().args(["snapshot", "ls", "--json"]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name.as_str())
        .map(|s| s["path"].as_str().unwrap().to_string())
        .expect("listed in --json");
    assert!(std::path::Path::new(&path).is_dir());

    let out = nook().args(["snapshot", "rm", &name]).output().unwrap();
    assert!(out.status.success(), "rm: {}", text(&out.stderr));
    assert!(
        !std::path::Path::new(&path).exists(),
        "rm removes the files"
    );
    let out = nook().args(["snapshot", "ls"]).output().unwrap();
    assert!(!text(&out.stdout).contains(&name));
    // Running a removed snapshot is a clear error.
    let out = nook()
        .args(["run", "--snapshot", &name, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains(&name), "{}", text(&out.stderr));
}

/// `nook run --snapshot NAME ARGS...`
fn run_snapshot(name: &str, args: &[&str]) -> std::process::Output {
    nook()
        .args(["run", "--snapshot", name])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn options_a_restore_cannot_honour_are_refused_and_the_others_apply() {
    if !ready() {
        return;
    }
    let name = format!("opts-test-{}", std::process::id());
    let out = nook()
        .args(["snapshot", "create", &name, "--memory", "256"])
        .output()
        .unwrap();
    assert!(out.status.success(), "create: {}", text(&out.stderr));

    // A volume would be silently missing in the restored VM: refused, and
    // the named volume is not even created.
    let volume = format!("opts-test-vol-{}", std::process::id());
    let spec = format!("{volume}:/d");
    let out = run_snapshot(
        &name,
        &["-v", &spec, "--", "sh", "-c", "echo important > /d/data"],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("-v/--volume"), "{err}");
    let volumes = nook().args(["volume", "ls"]).output().unwrap();
    assert!(!text(&volumes.stdout).contains(&volume));

    // A size the snapshot does not have, and an image: refused, all named.
    let out = run_snapshot(&name, &["--memory", "512", "--cpus", "2", "--", "true"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--memory 512 (the snapshot has 256 MiB)") && err.contains("--cpus 2"),
        "{err}"
    );
    let out = run_snapshot(&name, &["some-image", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("IMAGE some-image"));

    // The snapshot's own size, and the command's options, apply.
    let out = run_snapshot(
        &name,
        &[
            "--memory",
            "256",
            "-e",
            "FOO=bar",
            "-w",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo $FOO; pwd",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "bar\n/tmp\n",
        "stderr: {}",
        text(&out.stderr)
    );
    let out = nook().args(["snapshot", "rm", &name]).output().unwrap();
    assert!(out.status.success(), "rm: {}", text(&out.stderr));
}

#[test]
fn a_running_session_snapshots_as_it_is() {
    if !ready() {
        return;
    }
    let session = format!("snap-src-{}", std::process::id());
    let name = format!("from-session-{}", std::process::id());
    let ok = |args: &[&str]| {
        let out = nook().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    ok(&["start", "--name", &session]);
    let result = std::panic::catch_unwind(|| {
        ok(&[
            "exec",
            &session,
            "--",
            "sh",
            "-c",
            "echo live-state > /root/s",
        ]);
        let created = ok(&["snapshot", "create", &name, "--session", &session]);
        assert!(created.contains(&name), "{created}");
        // The session runs on, and the snapshot starts VMs with its state.
        assert_eq!(
            ok(&["exec", &session, "--", "cat", "/root/s"]),
            "live-state\n"
        );
        let restored = run_snapshot(&name, &["--", "cat", "/root/s"]);
        assert_eq!(
            text(&restored.stdout),
            "live-state\n",
            "{}",
            text(&restored.stderr)
        );
        let out = nook()
            .args(["snapshot", "create", &name, "--session", &session])
            .output()
            .unwrap();
        assert!(!out.status.success(), "an existing snapshot was replaced");
    });
    let _ = nook().args(["rm", "-f", &session]).output();
    let _ = nook().args(["snapshot", "rm", &name]).output();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
