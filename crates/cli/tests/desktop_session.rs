//! End-to-end tests of desktop sessions (`nook desktop start` and `view`)
//! on the qemu engine: the desktop image (built once per machine with
//! mmdebstrap, cached afterwards; scripts/test sets NOOK_TEST_DEBIAN_IMAGE),
//! a display of the chosen size that guest programs reach, and a real VNC
//! client (Python's vncdotool, installed into a virtual environment cached
//! under $NOOK_HOME) that sees the display.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{desktop_ready, nook, nook_out, ready, text};

use nook_serve::desktop::DisplaySize;

/// The vncdotool release the VNC test installs.
const VNCDOTOOL: &str = "vncdotool==1.4.2";

fn unique(case: &str) -> String {
    format!("t{}-desk-{case}", std::process::id())
}

/// Removes the session even when a test fails half-way.
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = nook_out(&["rm", "-f", &self.0]);
    }
}

/// Starts desktop `name` of `size` on the qemu engine with `more` options;
/// returns the seconds it took (boot to a display that answers and a
/// window manager that manages it).
fn start_desktop(name: &str, size: &str, more: &[&str]) -> f64 {
    let started = Instant::now();
    let mut args = vec![
        "desktop", "start", "--engine", "qemu", "--name", name, "--size", size,
    ];
    args.extend(more);
    let out = nook_out(&args);
    assert!(out.status.success(), "desktop start: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), name);
    started.elapsed().as_secs_f64()
}

/// `nook exec NAME -- sh -c SCRIPT`: its stdout; fails the test otherwise.
fn sh(name: &str, script: &str) -> String {
    let out = nook_out(&["exec", name, "--", "sh", "-c", script]);
    assert!(
        out.status.success(),
        "{script}: {:?}: {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn desktop_start_serves_a_display_of_the_chosen_size() {
    if !desktop_ready() {
        return;
    }
    let name = unique("size");
    let _c = Cleanup(name.clone());
    let secs = start_desktop(&name, "1024x768", &[]);
    eprintln!("nook desktop start (boot to display, qemu engine): {secs:.1} s");
    // The window manager has taken the screen by the time start returns.
    let wm_check = include_str!("desktop/wm_check.py");
    let out = nook_out(&["exec", &name, "--", "python3", "-c", wm_check]);
    assert_eq!(text(&out.stdout).trim(), "Openbox", "{}", text(&out.stderr));

    // Every command gets the display; the X socket is there.
    assert_eq!(sh(&name, "echo $DISPLAY").trim(), ":0");
    sh(&name, "test -S /tmp/.X11-unix/X0");
    // A client of the display sees its size and depth.
    let tk = "import tkinter; r = tkinter.Tk(); print(r.winfo_screenwidth(), r.winfo_screenheight(), r.winfo_screendepth())";
    assert_eq!(
        sh(&name, &format!("python3 -c '{tk}'")).trim(),
        "1024 768 24"
    );
    // The window manager runs.
    sh(&name, "pgrep -x openbox");
    let state = nook_serve::desktop::desktop_state(&nook::default_home(), &name).unwrap();
    assert_eq!(state.size, DisplaySize::new(1024, 768).unwrap());
    assert_eq!(state.display, ":0");

    // The image's font caches are valid: Openbox and Tk (fontconfig
    // users) rebuilt none of them since boot.
    let caches = sh(
        &name,
        "btime=$(sed -n 's/^btime //p' /proc/stat); \
         ls /var/cache/fontconfig | grep -c cache; \
         find /var/cache/fontconfig -type f -newermt @$btime",
    );
    let mut lines = caches.lines();
    let count: u32 = lines.next().unwrap_or("0").trim().parse().unwrap_or(0);
    assert!(count > 0, "no font caches in the image: {caches}");
    let rebuilt: Vec<&str> = lines.collect();
    assert!(
        rebuilt.is_empty(),
        "font caches rebuilt in the guest: {rebuilt:?}"
    );

    // The X server keeps its state when its last client leaves
    // (-noreset): with the window manager gone, xsetroot is the only
    // client, and the root is still red after it ended.
    let wm = state.window_manager_pid;
    sh(
        &name,
        &format!(
            "kill {wm}; i=0; while kill -0 {wm} 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
             ! pgrep -x openbox && xsetroot -solid '#ff0000'"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("shot.png");
    let out = nook_out(&["desktop", "screenshot", &name, "-o", shot.to_str().unwrap()]);
    assert!(out.status.success(), "screenshot: {}", text(&out.stderr));
    let (w, h, px) = common::decode_png(&std::fs::read(&shot).unwrap());
    assert_eq!((w, h), (1024, 768));
    let not_red = px.chunks(3).filter(|p| *p != [255, 0, 0]).count();
    assert_eq!(
        not_red, 0,
        "pixels that are not red after the last client left"
    );

    // A desktop is a normal session: it stops like one.
    let out = nook_out(&["stop", &name]);
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
}

#[test]
fn view_refuses_sessions_without_a_display() {
    if !ready() {
        return;
    }
    let name = unique("plain");
    let _c = Cleanup(name.clone());
    let out = nook_out(&["start", "--engine", "qemu", "--name", &name]);
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    let out = nook_out(&["desktop", "view", &name]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("has no desktop"),
        "{}",
        text(&out.stderr)
    );
    let out = nook_out(&["desktop", "view", &unique("absent")]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no session named"),
        "{}",
        text(&out.stderr)
    );
}

/// A Python with vncdotool, in a virtual environment cached under
/// $NOOK_HOME; `None` (with the reason printed) when it cannot be made.
fn vnc_python() -> Option<PathBuf> {
    let version = VNCDOTOOL.rsplit('=').next().unwrap_or("x");
    let venv = nook::default_home()
        .join("vnc-client")
        .join(format!("venv-{version}"));
    let python = venv.join("bin/python");
    let usable = |p: &PathBuf| {
        Command::new(p)
            .args(["-c", "import vncdotool, PIL"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if usable(&python) {
        return Some(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", VNCDOTOOL])
            .status()
            .is_ok_and(|s| s.success());
    if made && usable(&python) {
        Some(python)
    } else {
        eprintln!(
            "skipping: cannot install {VNCDOTOOL} from PyPI into {}",
            venv.display()
        );
        None
    }
}

/// `nook desktop view NAME`, running, with the URL's port and the password
/// it printed.
struct View {
    child: Child,
    port: String,
    password: String,
}

impl View {
    fn start(name: &str) -> View {
        let mut child = nook()
            .args(["desktop", "view", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nook desktop view");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = lines.next().and_then(Result::ok).unwrap_or_default();
        let password = lines.next().and_then(Result::ok).unwrap_or_default();
        let port = url
            .strip_prefix("vnc://127.0.0.1:")
            .unwrap_or_else(|| panic!("not a loopback VNC URL: {url:?}"))
            .to_string();
        let password = password
            .strip_prefix("password: ")
            .unwrap_or_else(|| panic!("no password line: {password:?}"))
            .to_string();
        View {
            child,
            port,
            password,
        }
    }

    /// One frame through vncdotool, described by tests/desktop_vnc.py
    /// (compared with the PNG `reference` when given).
    fn capture(
        &self,
        python: &PathBuf,
        password: &str,
        out: &str,
        reference: Option<&str>,
    ) -> serde_json::Value {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/desktop_vnc.py");
        let run = Command::new(python)
            .args([script, "127.0.0.1", &self.port, password, out])
            .args(reference)
            .output()
            .expect("run desktop_vnc.py");
        serde_json::from_slice(&run.stdout)
            .unwrap_or_else(|e| panic!("{e}: {} {}", text(&run.stdout), text(&run.stderr)))
    }
}

impl Drop for View {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn view_serves_the_display_to_a_vnc_client() {
    if !desktop_ready() {
        return;
    }
    let Some(python) = vnc_python() else {
        return;
    };
    let name = unique("vnc");
    let _c = Cleanup(name.clone());
    // Idles out once nothing but its display runs (checked at the end).
    let idle = Duration::from_secs(20);
    start_desktop(&name, "640x480", &["--idle-timeout", "20"]);
    // A grid of blue lines every 8 pixels on red: a frame with something
    // to match (and no fonts to wait for).
    sh(&name, "xsetroot -mod 8 8 -fg '#0000ff' -bg '#ff0000'");

    let mut view = View::start(&name);
    assert_eq!(view.password.len(), 8, "{}", view.password);
    let dir = tempfile::tempdir().unwrap();
    let frame_path = dir.path().join("frame.png");
    let frame_path = frame_path.to_str().unwrap();

    // What `screenshot` sees.
    let shot_path = dir.path().join("shot.png");
    let shot_path = shot_path.to_str().unwrap();
    let out = nook_out(&[
        "desktop",
        "screenshot",
        &name,
        "-o",
        shot_path,
        "--settle-ms",
        "3000",
    ]);
    assert!(out.status.success(), "screenshot: {}", text(&out.stderr));

    let started = Instant::now();
    let password = view.password.clone();
    let frame = view.capture(&python, &password, frame_path, Some(shot_path));
    eprintln!(
        "VNC connect, authenticate and capture 640x480: {:.1} s: {frame}",
        started.elapsed().as_secs_f64()
    );
    assert!(frame.get("error").is_none(), "{frame}");
    assert_eq!(frame["width"], 640, "{frame}");
    assert_eq!(frame["height"], 480, "{frame}");
    assert_eq!(frame["reference_size"], serde_json::json!([640, 480]));
    // Red between the blue lines: (7/8)^2 of the pixels.
    assert_eq!(
        frame["most_common"],
        serde_json::json!([255, 0, 0]),
        "{frame}"
    );
    let red = frame["most_common_fraction"].as_f64().unwrap();
    assert!((0.75..0.8).contains(&red), "{frame}");
    // The frame is the screenshot, up to the pointer (which VNC draws in
    // and screenshots leave out).
    let differing = frame["differing_fraction"].as_f64().unwrap();
    assert!(differing < 0.01, "{frame}");

    // A wrong password is refused.
    let refused = view.capture(&python, "wrong-pw", frame_path, None);
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("Authentication")),
        "{refused}"
    );

    // The view stops on SIGTERM, and its x11vnc with it.
    let status = Command::new("kill")
        .arg(view.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let ended = view.child.wait().unwrap();
    assert!(ended.success(), "view ended with {ended:?}");
    let out = nook_out(&["exec", &name, "--", "pgrep", "-x", "x11vnc"]);
    assert!(
        !out.status.success(),
        "x11vnc still runs: {}",
        text(&out.stdout)
    );

    // A view killed outright (SIGKILL: no clean-up of its own) takes its
    // x11vnc with it too.
    let mut view = View::start(&name);
    let frame = view.capture(&python, &view.password.clone(), frame_path, None);
    assert_eq!(frame["width"], 640, "{frame}");
    view.child.kill().unwrap();
    view.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = nook_out(&["exec", &name, "--", "pgrep", "-x", "x11vnc"]);
        if !out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "x11vnc still runs after its view was killed: {}",
            text(&out.stdout)
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // With nothing but its display running, the desktop idles out.
    let last_activity = Instant::now();
    let sd = nook_serve::SessionDir::new(&nook::default_home(), &name).unwrap();
    let stopped = || {
        sd.read_state()
            .is_ok_and(|s| s.state != nook_serve::SessionPhase::Running)
    };
    while !stopped() {
        assert!(
            last_activity.elapsed() < idle + Duration::from_secs(60),
            "the desktop did not idle out"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(last_activity.elapsed() >= idle - Duration::from_secs(1));
    let reason = sd.read_state().unwrap().exit_reason.unwrap_or_default();
    assert!(reason.contains("idle timeout"), "{reason}");
}

/// The width and height in a PNG's header.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let be = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    (be(16), be(20))
}

#[test]
fn an_mcp_client_creates_views_clicks_and_destroys_a_desktop() {
    use base64::Engine as _;
    if !desktop_ready() {
        return;
    }
    let (mut c, _) = common::mcp::McpClient::connect("2025-06-18", &[]);
    let created = c.ok(
        "desktop_create",
        serde_json::json!({"size": [640, 480], "max_screenshot_size": [320, 240]}),
    );
    let id = created["desktop_id"]
        .as_str()
        .expect("desktop_id")
        .to_string();
    let _c = Cleanup(id.clone());
    assert_eq!(created["width"], 640, "{created}");
    assert_eq!(created["screenshot_width"], 320, "{created}");
    assert_eq!(created["screenshot_height"], 240, "{created}");
    let sd = nook_serve::SessionDir::new(&nook::default_home(), &id).unwrap();
    let host_pid = sd.read_state().unwrap().pid;
    assert!(!common::qemu_of(host_pid).is_empty(), "no VM for {id}");

    // A desktop is a sandbox: sandbox_exec runs on its display.
    let out = c.ok(
        "sandbox_exec",
        serde_json::json!({"sandbox_id": id, "command": "xsetroot -solid '#00ff00' && echo $DISPLAY"}),
    );
    assert_eq!(out["stdout"], ":0\n", "{out}");

    // A screenshot is image content: a PNG of the scaled size.
    let shot = c.call(
        "desktop_action",
        serde_json::json!({"desktop_id": id, "action": "screenshot"}),
    );
    assert_eq!(shot["isError"], false, "{shot}");
    let image = &shot["content"][0];
    assert_eq!(image["type"], "image", "{shot}");
    assert_eq!(image["mimeType"], "image/png");
    let png = base64::engine::general_purpose::STANDARD
        .decode(image["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(png_size(&png), (320, 240));
    assert_eq!(shot["structuredContent"]["kind"], "image");
    assert_eq!(shot["structuredContent"]["width"], 320);

    // A click, and the pointer is where it went (in screenshot pixels).
    let done = c.ok(
        "desktop_action",
        serde_json::json!({"desktop_id": id, "action": "left_click", "coordinate": [100, 50]}),
    );
    assert_eq!(done["kind"], "done", "{done}");
    let at = c.ok(
        "desktop_action",
        serde_json::json!({"desktop_id": id, "action": "cursor_position"}),
    );
    assert_eq!(
        (at["x"].clone(), at["y"].clone()),
        (100.into(), 50.into()),
        "{at}"
    );
    let msg = c.tool_error(
        "desktop_action",
        serde_json::json!({"desktop_id": id, "action": "type"}),
    );
    assert!(msg.contains("missing field `text`"), "{msg}");

    // Destroyed: nothing is left running.
    let gone = c.ok("desktop_destroy", serde_json::json!({"desktop_id": id}));
    assert_eq!(gone["desktop_id"], id.as_str());
    assert!(common::qemu_of(host_pid).is_empty(), "{id} left its VM");
    assert!(
        !nook_serve::host_alive(host_pid),
        "{id} left its session host"
    );
    assert!(!sd.0.exists(), "{id} left its session directory");
    assert!(c.disconnect().success());
}
