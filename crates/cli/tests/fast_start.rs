//! Starting fast and truthfully: template snapshots for `nook run`, `auto`
//! recovering from a kvm engine that cannot boot guests here, and the guest
//! agent that nook takes (only a static one).

mod common;
use common::{nook, ok, ready, template_key, text};

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn run_debug(args: &[&str]) -> Output {
    nook()
        .env("NOOK_LOG", "debug")
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .expect("run nook")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn run_restores_from_a_template_with_its_own_entropy_and_clock() {
    if !ready() {
        return;
    }
    let probe = "head -c 16 /dev/urandom | od -An -tx1; date +%s";
    // The first run may boot and make the template (or find it made).
    let first = run_debug(&["run", "--", "sh", "-c", probe]);
    ok(&first);
    let (_, key) =
        template_key(&text(&first.stderr)).expect("the default configuration has a template");
    // The template's clock stopped when it was made. Made a moment ago (by
    // the first run, or by another test), it is too close to the host's to
    // tell a clone that kept it from one that took the host's: wait until
    // it is 3 s behind.
    let manifest = nook::default_home()
        .join("templates")
        .join(&key)
        .join("nook.json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).expect("the template's manifest"))
            .expect("a JSON manifest");
    let made = manifest["created"].as_u64().expect("its creation time");
    while now_secs() < made + 3 {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Then every run is a clone.
    let mut seen = Vec::new();
    for _ in 0..2 {
        // The clone's clock is set from the host's when it is restored,
        // however long a loaded host takes to start it or stop it after.
        let before = now_secs();
        let out = run_debug(&["run", "--", "sh", "-c", probe]);
        let after = now_secs();
        let stdout = ok(&out);
        assert_eq!(
            template_key(&text(&out.stderr)),
            Some((true, key.clone())),
            "{}",
            text(&out.stderr)
        );
        let mut lines = stdout.lines();
        let entropy = lines.next().expect("random bytes").trim().to_string();
        let guest_time: u64 = lines.next().expect("date").trim().parse().unwrap();
        assert!(
            guest_time + 1 >= before && guest_time <= after + 1,
            "the clone's clock ({guest_time}) is the host's during the run [{before}, {after}], \
             not the template's (made at {made})"
        );
        seen.push(entropy);
    }
    assert_ne!(seen[0], seen[1], "clones never share random bytes");

    // Another memory size is another configuration, with its own template.
    let other = run_debug(&["run", "--memory", "320", "--", "true"]);
    ok(&other);
    let other = run_debug(&["run", "--memory", "320", "--", "true"]);
    ok(&other);
    let (restored, other_key) = template_key(&text(&other.stderr)).expect("a template");
    assert!(restored, "{}", text(&other.stderr));
    assert_ne!(other_key, key);

    // --no-template boots.
    let booted = run_debug(&["run", "--no-template", "--", "true"]);
    ok(&booted);
    assert_eq!(template_key(&text(&booted.stderr)), None);
}

#[test]
fn auto_falls_back_to_qemu_when_the_kvm_guest_cannot_boot() {
    if !ready() {
        return;
    }
    let setup = nook()
        .args(["setup", "--json", "--no-template"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&setup.stdout).expect("setup --json");
    if v["kvm"]["usable"] != true {
        eprintln!(
            "skipping: /dev/kvm is not usable here: {}",
            v["kvm"]["reason"]
        );
        return;
    }
    if v["kvm"]["hardware_speed"] == true {
        eprintln!("skipping: guests boot on kvm here, so there is nothing to fall back from");
        return;
    }
    // The injected verdict makes auto pick kvm on a host where ring 0 is
    // emulated, so the guest cannot come up there.
    let t0 = Instant::now();
    let out = nook()
        .env(nook::FAULT_KVM_HARDWARE, "1")
        .args(["run", "--", "echo", "hi"])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "hi\n", "stderr: {}", text(&out.stderr));
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("did not come up on the kvm engine") && stderr.contains("on qemu instead"),
        "a warning says what happened: {stderr}"
    );
    eprintln!("fallback run took {:?}", t0.elapsed());
}

#[test]
fn a_dynamically_linked_agent_fails_at_once_naming_the_file() {
    if !ready() {
        return;
    }
    let t0 = Instant::now();
    let out = nook()
        .env("NOOK_AGENT", "/bin/ls")
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("/bin/ls") && stderr.contains("dynamically linked"),
        "{stderr}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[test]
fn a_dynamic_agent_next_to_nook_is_skipped_for_the_static_one() {
    if !ready() {
        return;
    }
    // The layout a `cargo build --release` followed by scripts/setup leaves:
    // target/release/{nook, nook-agent (dynamic)} and the static agent in
    // target/x86_64-unknown-linux-gnu/release/.
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let static_dir = dir.path().join("x86_64-unknown-linux-gnu/release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::create_dir_all(&static_dir).unwrap();
    let nook_copy = release.join("nook");
    std::fs::copy(env!("CARGO_BIN_EXE_nook"), &nook_copy).unwrap();
    std::fs::copy("/bin/ls", release.join("nook-agent")).unwrap();
    let run = |nook_bin: &Path| {
        std::process::Command::new(nook_bin)
            .env_remove("NOOK_AGENT")
            .env_remove("NOOK_LOG")
            .stdin(std::process::Stdio::null())
            .args(["run", "--", "echo", "ok"])
            .output()
            .unwrap()
    };
    // Only the dynamic one: a clear error naming it and why it was skipped.
    let out = run(&nook_copy);
    assert_eq!(out.status.code(), Some(125));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&release.join("nook-agent").display().to_string())
            && stderr.contains("dynamically linked"),
        "{stderr}"
    );
    // With the static one in place, it is taken.
    let agent = std::env::var("NOOK_AGENT").unwrap();
    std::fs::copy(agent, static_dir.join("nook-agent")).unwrap();
    let out = run(&nook_copy);
    assert_eq!(text(&out.stdout), "ok\n", "stderr: {}", text(&out.stderr));
}
