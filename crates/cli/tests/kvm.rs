//! The kvm engine end to end.
//!
//! On hosts with hardware KVM, `NOOK_TEST_KVM_BOOT=1 cargo test -p nook-cli
//! --test kvm` boots Debian's kernel to the agent on nook's own VMM and runs
//! a command. On hosts where KVM emulates guest ring 0 (nested or
//! software-assisted virtualization: `nook setup` says which) a full boot
//! takes hours, so the boot test is opt-in; what runs by default checks
//! that nook tells the user why the kvm engine would be slow.

mod common;
use common::{nook, ready as agent_ready, text};

#[test]
fn full_boot_runs_a_command_on_the_kvm_engine() {
    if std::env::var_os("NOOK_TEST_KVM_BOOT").is_none() {
        eprintln!("skipping: set NOOK_TEST_KVM_BOOT=1 on a host with hardware KVM to boot a full guest on the kvm engine");
        return;
    }
    if !agent_ready() {
        return;
    }
    let out = nook()
        .args(["run", "--engine", "kvm", "--", "echo", "hello"])
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "hello\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(out.status.success());
}

#[test]
fn setup_reports_the_kvm_verdict_with_its_figure() {
    if !agent_ready() {
        return;
    }
    let out = nook().args(["setup", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kvm = &v["kvm"];
    if kvm["usable"] != true {
        eprintln!("skipping: /dev/kvm is not usable here: {}", kvm["reason"]);
        return;
    }
    let ns = kvm["ns_per_iteration"].as_f64().expect("a measured figure");
    assert!(ns > 0.0);
    if kvm["hardware_speed"] == true {
        assert_eq!(v["engine"], "kvm", "auto picks kvm at hardware speed");
    } else {
        assert_eq!(
            v["engine"], "qemu (tcg)",
            "auto avoids a KVM that emulates ring 0"
        );
        assert!(
            v["reason"].as_str().unwrap().contains("emulated"),
            "{}",
            v["reason"]
        );
        // Forcing kvm is honoured, with a warning that says why it will be slow.
        let out = nook().args(["setup", "--engine", "kvm"]).output().unwrap();
        assert!(out.status.success());
        assert!(
            text(&out.stdout).contains("engine:        kvm"),
            "{}",
            text(&out.stdout)
        );
        assert!(
            text(&out.stderr).contains("very slow"),
            "{}",
            text(&out.stderr)
        );
    }
}
