//! End-to-end tests of host directory shares (`nook run --share`): real
//! guests on the qemu engine, the share served by nook-fs over vhost-user.
//!
//! They need the guest agent and kernel assets that `scripts/setup`
//! prepares; without them each test prints why and skips.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{nook, ready};

/// `nook run --engine qemu --share SHARE -- sh -c SCRIPT`.
fn run_with_share(share: &str, script: &str) -> Output {
    let out = nook()
        .args([
            "run", "--engine", "qemu", "--share", share, "--", "sh", "-c",
        ])
        .arg(script)
        .output()
        .expect("run nook");
    eprintln!(
        "--- stdout\n{}--- stderr\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn share_arg(dir: &Path, guest: &str, ro: bool) -> String {
    format!("{}:{guest}{}", dir.display(), if ro { ":ro" } else { "" })
}

#[test]
fn guest_reads_a_host_file() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/deep.txt"), "deep\n").unwrap();
    let out = run_with_share(
        &share_arg(dir.path(), "/mnt/host", false),
        "cat /mnt/host/hello.txt /mnt/host/sub/deep.txt && grep -c ' /mnt/host virtiofs ' /proc/mounts",
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "hello from the host\ndeep\n1\n");
}

#[test]
fn guest_writes_reach_the_host() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old.txt"), "old").unwrap();
    let out = run_with_share(
        &share_arg(dir.path(), "/work", false),
        "echo written-in-guest > /work/new.txt && mkdir -p /work/d/e && echo x > /work/d/e/f && rm /work/old.txt",
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("new.txt")).unwrap(),
        "written-in-guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("d/e/f")).unwrap(),
        "x\n"
    );
    assert!(!dir.path().join("old.txt").exists());
}

#[test]
fn read_only_share_refuses_guest_writes() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep.txt"), "original").unwrap();
    // Each attempt prints its outcome; the script goes on after failures.
    let out = run_with_share(
        &share_arg(dir.path(), "/ro", true),
        "cat /ro/keep.txt; echo; \
         echo changed > /ro/keep.txt && echo WROTE; \
         touch /ro/new && echo CREATED; \
         rm /ro/keep.txt && echo REMOVED; \
         mkdir /ro/d && echo MKDIR; \
         grep ' /ro virtiofs ro' /proc/mounts >/dev/null && echo MOUNTED-RO",
    );
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert_eq!(stdout, "original\nMOUNTED-RO\n");
    assert!(text(&out.stderr).contains("Read-only file system"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
        "original"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep.txt"]);
}

#[test]
fn symlinks_and_dot_dot_do_not_reach_host_files_outside_the_share() {
    if !ready() {
        return;
    }
    // The secret sits next to the share on the host; the share holds
    // symlinks to it (absolute and relative) and to its directory.
    let top = tempfile::tempdir().unwrap();
    let secret = top.path().join("secret.txt");
    let marker = format!("TOP-SECRET-{}", std::process::id());
    std::fs::write(&secret, &marker).unwrap();
    let share = top.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::os::unix::fs::symlink(&secret, share.join("abs")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", share.join("rel")).unwrap();
    std::os::unix::fs::symlink(top.path(), share.join("topdir")).unwrap();
    let secret_name = secret.display().to_string();
    let script = format!(
        "readlink /mnt/s/abs; readlink /mnt/s/rel; \
         cat /mnt/s/abs; cat /mnt/s/rel; cat /mnt/s/topdir/secret.txt; \
         cat /mnt/s/../secret.txt; cat /mnt/s/../../secret.txt; \
         cat {secret_name}; ls /mnt/s/..; \
         cd /mnt/s && cat ../secret.txt; cat ./../secret.txt; \
         echo DONE"
    );
    let out = run_with_share(&share_arg(&share, "/mnt/s", false), &script);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(stdout.ends_with("DONE\n"), "{stdout}");
    // readlink gives the link text: the guest resolves it in the guest.
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(secret_name.as_str()));
    assert_eq!(lines.next(), Some("../secret.txt"));
    assert!(
        !stdout.contains(&marker) && !stderr.contains(&marker),
        "the guest read the host secret"
    );
    // Every attempt failed: no such file in the guest.
    assert!(
        stderr.matches("No such file or directory").count() >= 6,
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), marker);
}

#[test]
fn a_share_given_through_a_symlink_is_the_directory_it_points_to() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("in.txt"), "through the link\n").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    // `--share link:/work` (relative to the current directory), and
    // `--share "$PWD:/work"` where the shell's $PWD was reached through
    // the link.
    for (cwd, host) in [
        (dir.path(), PathBuf::from("link")),
        (link.as_path(), link.clone()),
    ] {
        let out = nook()
            .current_dir(cwd)
            .env("PWD", cwd)
            .args(["run", "--engine", "qemu", "--share"])
            .arg(format!("{}:/work", host.display()))
            .args([
                "--",
                "sh",
                "-c",
                "cat /work/in.txt && echo out > /work/out.txt",
            ])
            .output()
            .unwrap();
        assert_eq!(
            text(&out.stdout),
            "through the link\n",
            "{}",
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            std::fs::read_to_string(real.join("out.txt")).unwrap(),
            "out\n"
        );
        std::fs::remove_file(real.join("out.txt")).unwrap();
    }
    // A symlink to a file is refused, saying a share must be a directory.
    std::fs::write(dir.path().join("file"), "x").unwrap();
    let file_link = dir.path().join("file-link");
    std::os::unix::fs::symlink(dir.path().join("file"), &file_link).unwrap();
    let out = run_with_share(&share_arg(&file_link, "/work", false), "true");
    assert_eq!(out.status.code(), Some(125));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("file-link") && stderr.contains("a share must be a directory"),
        "{stderr}"
    );
}
