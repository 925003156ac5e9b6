//! `cargo bench -p nook-cli --bench desktop`: what desktop actions cost on
//! the qemu engine. Prints a table:
//! - boot to first screenshot: `nook desktop start` (1280x800) until the
//!   first screenshot is in hand;
//! - screenshot latency, full size (1280x800) and scaled (to fit
//!   1024x768: 1024x640), median and p99 over `NOOK_BENCH_N` (default 100),
//!   through the library (`nook_serve::desktop::Desktop`: session socket,
//!   session host, agent channel, X11 in the guest, PNG);
//! - action round trip (`mouse_move`, `left_click` on the empty root
//!   window), median and p99;
//! - the same screenshots and `mouse_move` through the daemon
//!   (`nook serve`'s `desktop_action`, request line out to reply line in,
//!   PNG in base64 on the line), on the same desktop;
//! - memory of the desktop session: PSS of its host process and its VM.
//!
//! Needs `NOOK_AGENT`, prepared assets (`scripts/setup`) and the desktop
//! image (built on first use, a few minutes).

use std::process::{Command, Stdio};
use std::time::Instant;

mod common;
use common::daemon::{start_daemon, Client};
use common::{env_usize, ms, pct, pss_kib, qemu_pids};
use serde_json::json;

use nook_serve::desktop::{Action, Desktop, DesktopOptions};

fn nook(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nook"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run nook");
    assert!(
        out.status.success(),
        "nook {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes the desktop when the bench ends, panics included.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_nook"))
            .args(["rm", "-f", &self.0])
            .stdin(Stdio::null())
            .output();
    }
}

/// Times `n` runs of `f` (after 3 unmeasured ones), in ms.
fn times(n: usize, mut f: impl FnMut(usize)) -> Vec<f64> {
    for i in 0..3 {
        f(i);
    }
    (0..n)
        .map(|i| {
            let t = Instant::now();
            f(i);
            ms(t.elapsed())
        })
        .collect()
}

fn row(what: &str, v: &[f64]) {
    println!(
        "{what:<44} {:>10.1} {:>10.1}",
        pct(v.to_vec(), 0.5),
        pct(v.to_vec(), 0.99)
    );
}

fn main() {
    let n = env_usize("NOOK_BENCH_N", 100);
    let home = nook::default_home();
    let name = format!("bench-desktop-{}", std::process::id());
    // Built before the clock starts: the image is cached after its first use.
    nook_serve::desktop_image::ensure_desktop_image(&home, &mut std::io::stderr())
        .expect("the desktop image");

    let t0 = Instant::now();
    nook(&["desktop", "start", "--engine", "qemu", "--name", &name]);
    let _cleanup = Cleanup(name.clone());
    let mut full = Desktop::open(&home, &name, DesktopOptions::default()).expect("open");
    let (png, w, h) = full.screenshot().expect("screenshot");
    let boot = ms(t0.elapsed());
    let mut scaled = Desktop::open(
        &home,
        &name,
        DesktopOptions {
            max_size: Some([1024, 768]),
            ..Default::default()
        },
    )
    .expect("open");
    let (small, sw, sh) = scaled.screenshot().expect("scaled screenshot");

    let shot_full = times(n, |_| {
        full.screenshot().expect("screenshot");
    });
    let shot_scaled = times(n, |_| {
        scaled.screenshot().expect("screenshot");
    });
    let moves = times(n, |i| {
        let c = [100 + (i as u32 % 2) * 100, 100];
        full.act(Action::MouseMove { coordinate: c })
            .expect("mouse_move");
    });
    let clicks = times(n, |_| {
        full.act(Action::LeftClick {
            coordinate: Some([w - 5, h - 5]),
            text: None,
        })
        .expect("left_click");
    });
    // Through the daemon: the same session, reached by `desktop_action`.
    let dir = tempfile::tempdir().expect("tempdir");
    let (_daemon, socket) = start_daemon(dir.path(), "qemu");
    let mut c = Client::connect(&socket);
    let mut daemon_act = |action: serde_json::Value| {
        let mut req = json!({"id": 1, "type": "desktop_action", "session": name});
        for (k, v) in action.as_object().expect("an object") {
            req[k] = v.clone();
        }
        let reply = c.call(req);
        assert_ne!(reply["type"], "error", "{reply}");
    };
    let daemon_full = times(n, |_| {
        daemon_act(json!({"action": "screenshot"}));
    });
    let daemon_scaled = times(n, |_| {
        daemon_act(json!({"action": "screenshot", "max_screenshot_size": [1024, 768]}));
    });
    let daemon_moves = times(n, |i| {
        let c = [100 + (i as u32 % 2) * 100, 100];
        daemon_act(json!({"action": "mouse_move", "coordinate": c}));
    });
    let state = nook_serve::list_sessions(&home)
        .expect("list sessions")
        .into_iter()
        .find(|s| s.name == name)
        .expect("the session is listed");
    let vm_kib: u64 = qemu_pids(state.pid).into_iter().map(pss_kib).sum();
    let host_kib = pss_kib(state.pid);

    println!("desktop 1280x800 on the qemu engine, {n} runs each\n");
    println!("{:<44} {:>10} {:>10}", "", "median ms", "p99 ms");
    row("boot to first screenshot (desktop start)", &[boot]);
    row(
        &format!("screenshot full {w}x{h} ({} KiB PNG)", png.len() / 1024),
        &shot_full,
    );
    row(
        &format!(
            "screenshot scaled {sw}x{sh} ({} KiB PNG)",
            small.len() / 1024
        ),
        &shot_scaled,
    );
    row("action round trip: mouse_move", &moves);
    row("action round trip: left_click", &clicks);
    row("daemon: screenshot full", &daemon_full);
    row("daemon: screenshot scaled", &daemon_scaled);
    row("daemon: action round trip: mouse_move", &daemon_moves);
    println!(
        "\nmemory of the desktop session: VM {:.0} MiB + session host {:.1} MiB (PSS)",
        vm_kib as f64 / 1024.0,
        host_kib as f64 / 1024.0
    );
}
