//! End-to-end tests of desktop actions (`nook desktop screenshot`, `nook
//! desktop do`, `nook_serve::desktop::Desktop`) on the qemu engine: a red
//! root window comes back red at the chosen size, a small Tk program
//! (`tests/desktop/tk_events.py`) sees clicks, scrolls, drags and keys at
//! the right places, and the pointer round-trips through screenshot
//! scaling. The desktop image is built once per machine (scripts/test sets
//! NOOK_TEST_DEBIAN_IMAGE).

use std::time::{Duration, Instant};

mod common;
use common::{decode_png, desktop_ready, nook_out, ok, text};

use nook_serve::desktop::{Action, ActionResult, Desktop, DesktopOptions};
use serde_json::Value;

fn unique(case: &str) -> String {
    format!("t{}-act-{case}", std::process::id())
}

/// The stdout of a successful `nook ARGS`; fails the test otherwise.
fn nook_ok(args: &[&str]) -> String {
    ok(&nook_out(args))
}

/// A running desktop session, removed when dropped (a failed test too).
struct DesktopSession(String);

impl DesktopSession {
    /// Starts desktop `case` with a display of `size` on the qemu engine.
    fn start(case: &str, size: &str) -> DesktopSession {
        let name = unique(case);
        let out = nook_out(&[
            "desktop", "start", "--engine", "qemu", "--name", &name, "--size", size,
        ]);
        let session = DesktopSession(name);
        assert!(out.status.success(), "desktop start: {}", text(&out.stderr));
        session
    }

    /// Runs `script` with `DISPLAY` set to the desktop's display.
    fn sh(&self, script: &str) -> String {
        nook_ok(&[
            "exec",
            "-e",
            "DISPLAY=:0",
            &self.0,
            "--",
            "sh",
            "-c",
            script,
        ])
    }

    fn desktop(&self, options: DesktopOptions) -> Desktop {
        Desktop::open(&nook::default_home(), &self.0, options).expect("open the desktop")
    }
}

impl Drop for DesktopSession {
    fn drop(&mut self) {
        let _ = nook_out(&["rm", "-f", &self.0]);
    }
}

#[test]
fn a_red_root_window_is_red_in_screenshots_of_the_chosen_size() {
    if !desktop_ready() {
        return;
    }
    let d = DesktopSession::start("red", "1024x640");
    d.sh("xsetroot -solid '#ff0000'");
    let dir = tempfile::tempdir().unwrap();
    for (max, want) in [(None, (1024, 640)), (Some("512x512"), (512, 320))] {
        let file = dir.path().join("shot.png");
        let file_arg = file.to_str().unwrap();
        let mut args = vec!["desktop", "screenshot", &d.0, "-o", file_arg];
        if let Some(m) = max {
            args.extend(["--max-size", m]);
        }
        nook_ok(&args);
        let (w, h, px) = decode_png(&std::fs::read(&file).unwrap());
        assert_eq!((w, h), want, "size with --max-size {max:?}");
        // No window is open on this desktop: every pixel is the root's.
        let not_red = px.chunks(3).filter(|p| *p != [255, 0, 0]).count();
        assert_eq!(not_red, 0, "pixels that are not red at {w}x{h}");
    }
}

/// The Tk program's log in the guest: every line so far.
struct TkLog<'a> {
    d: &'a DesktopSession,
    path: &'static str,
}

impl TkLog<'_> {
    fn lines(&self) -> Vec<Value> {
        self.d
            .sh(&format!("cat {} 2>/dev/null || true", self.path))
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `pred` holds for the events after the first `from`.
    fn wait(&self, from: usize, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        self.wait_for(from, what, Duration::from_secs(60), pred)
    }

    /// Waits (at most `limit`) until `pred` holds for the events after the
    /// first `from`.
    fn wait_for(
        &self,
        from: usize,
        what: &str,
        limit: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let all = self.lines();
            let new = all.get(from..).unwrap_or_default().to_vec();
            if pred(&new) {
                return new;
            }
            if Instant::now() >= deadline {
                let procs = self.d.sh("ps -eo pid,etime,args | grep -v '\\['");
                panic!("{what}: the program saw {new:#?}\nguest processes:\n{procs}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The widget's latest place: its centre and its box.
    fn widget(&self, name: &str) -> ([u32; 2], [u32; 4]) {
        let l = self
            .lines()
            .into_iter()
            .rev()
            .find(|l| l["layout"] == name)
            .expect("a layout line");
        let n = |k: &str| l[k].as_u64().unwrap() as u32;
        let (x, y, w, h) = (n("x"), n("y"), n("w"), n("h"));
        ([x + w / 2, y + h / 2], [x, y, w, h])
    }
}

/// Sends `action`, which must be done, and waits until the events the
/// program saw after it satisfy `pred`; those events.
fn act_and_see(
    log: &TkLog<'_>,
    desk: &mut Desktop,
    action: Action,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let n = log.lines().len();
    assert_eq!(desk.act(action).unwrap(), ActionResult::Done, "{what}");
    log.wait(n, what, pred)
}

fn event<'a>(lines: &'a [Value], widget: &str, kind: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["widget"] == widget && l["event"] == kind)
        .collect()
}

fn at(e: &Value) -> [u64; 2] {
    [e["x"].as_u64().unwrap(), e["y"].as_u64().unwrap()]
}

/// Starts the Tk program on the desktop; its log, once its window is laid out.
fn start_tk(d: &DesktopSession) -> TkLog<'_> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/desktop/tk_events.py");
    nook_ok(&["cp", script, &format!("{}:/tmp/tk_events.py", d.0)]);
    nook_ok(&[
        "exec",
        "-d",
        "-e",
        "DISPLAY=:0",
        &d.0,
        "--",
        "python3",
        "/tmp/tk_events.py",
        "/tmp/tk.jsonl",
    ]);
    let log = TkLog {
        d,
        path: "/tmp/tk.jsonl",
    };
    // Python and Tk start slowly on an emulated CPU, slower still with
    // other guests busy.
    log.wait_for(0, "the window's layout", Duration::from_secs(240), |l| {
        l.iter().any(|e| e["layout"] == "entry")
    });
    // The window manager may still move the window: wait until it stays.
    let mut last = log.widget("entry");
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = log.widget("entry");
        if now == last {
            return log;
        }
        last = now;
    }
}

#[test]
fn a_tk_program_sees_clicks_scrolls_drags_and_keys_where_they_are_sent() {
    if !desktop_ready() {
        return;
    }
    let d = DesktopSession::start("tk", "1280x800");
    let log = start_tk(&d);
    let mut desk = d.desktop(DesktopOptions::default());
    let (button, _) = log.widget("button");
    let (canvas, [cx, cy, _, _]) = log.widget("canvas");
    let (entry, _) = log.widget("entry");
    let b = [u64::from(button[0]), u64::from(button[1])];

    let left_click = Action::LeftClick {
        coordinate: Some(button),
        text: None,
    };
    let seen = act_and_see(&log, &mut desk, left_click, "left_click", |l| {
        !event(l, "button", "release").is_empty()
    });
    let press = event(&seen, "button", "press");
    assert_eq!(press.len(), 1, "{seen:?}");
    assert_eq!((press[0]["num"].as_u64(), at(press[0])), (Some(1), b));

    let n = log.lines().len();
    desk.act(Action::DoubleClick {
        coordinate: Some(button),
        text: None,
    })
    .unwrap();
    let seen = log.wait(n, "double_click", |l| {
        !event(l, "button", "double").is_empty()
    });
    assert_eq!(at(event(&seen, "button", "double")[0]), b);

    let n = log.lines().len();
    desk.act(Action::RightClick {
        coordinate: Some(button),
        text: None,
    })
    .unwrap();
    let seen = log.wait(n, "right_click", |l| {
        event(l, "button", "press").iter().any(|e| e["num"] == 3)
    });
    let right = event(&seen, "button", "press");
    assert_eq!((right[0]["num"].as_u64(), at(right[0])), (Some(3), b));

    let n = log.lines().len();
    desk.act(Action::Scroll {
        coordinate: Some(canvas),
        scroll_direction: nook::ScrollDirection::Down,
        scroll_amount: 3,
        text: None,
    })
    .unwrap();
    let seen = log.wait(n, "scroll down 3", |l| {
        event(l, "canvas", "release")
            .iter()
            .filter(|e| e["num"] == 5)
            .count()
            == 3
    });
    let wheel: Vec<_> = event(&seen, "canvas", "press");
    assert_eq!(wheel.len(), 3, "{seen:?}");
    assert!(wheel
        .iter()
        .all(|e| e["num"] == 5 && at(e) == [u64::from(canvas[0]), u64::from(canvas[1])]));

    let (from, to) = ([cx + 20, cy + 20], [cx + 250, cy + 120]);
    let n = log.lines().len();
    desk.act(Action::LeftClickDrag {
        start_coordinate: from,
        coordinate: to,
    })
    .unwrap();
    let seen = log.wait(n, "left_click_drag", |l| {
        !event(l, "canvas", "release").is_empty()
    });
    assert_eq!(at(event(&seen, "canvas", "press")[0]), from.map(u64::from));
    assert!(
        !event(&seen, "canvas", "motion").is_empty(),
        "motion while dragging: {seen:?}"
    );
    assert_eq!(at(event(&seen, "canvas", "release")[0]), to.map(u64::from));

    desk.act(Action::LeftClick {
        coordinate: Some(entry),
        text: None,
    })
    .unwrap();
    let n = log.lines().len();
    desk.act(Action::Type {
        text: "héllo wörld".into(),
    })
    .unwrap();
    log.wait(n, "type héllo wörld", |l| {
        event(l, "entry", "text")
            .iter()
            .any(|e| e["text"] == "héllo wörld")
    });

    let n = log.lines().len();
    desk.act(Action::Key {
        text: "ctrl+a".into(),
    })
    .unwrap();
    let seen = log.wait(n, "key ctrl+a", |l| {
        event(l, "entry", "key").iter().any(|e| e["keysym"] == "a")
    });
    let a = event(&seen, "entry", "key")
        .into_iter()
        .find(|e| e["keysym"] == "a")
        .unwrap();
    assert_eq!(a["state"].as_u64().unwrap() & 4, 4, "Control held: {a}");

    more_clicks_and_a_drag_in_steps(&log, &mut desk);
    holds_and_waits(&log, &mut desk);
}

/// On the Tk program of the test above: `middle_click`, `triple_click`,
/// and a drag made of `left_mouse_down`, `mouse_move` and
/// `left_mouse_up` (the button stays down in between).
fn more_clicks_and_a_drag_in_steps(log: &TkLog<'_>, desk: &mut Desktop) {
    let (button, _) = log.widget("button");
    let b = [u64::from(button[0]), u64::from(button[1])];
    let (canvas, [cx, cy, _, _]) = log.widget("canvas");

    let middle_click = Action::MiddleClick {
        coordinate: Some(button),
        text: None,
    };
    let seen = act_and_see(log, desk, middle_click, "middle_click", |l| {
        event(l, "button", "release").iter().any(|e| e["num"] == 2)
    });
    let press = event(&seen, "button", "press");
    assert_eq!(press.len(), 1, "{seen:?}");
    assert_eq!((press[0]["num"].as_u64(), at(press[0])), (Some(2), b));

    let c = [u64::from(canvas[0]), u64::from(canvas[1])];
    let triple_click = Action::TripleClick {
        coordinate: Some(canvas),
        text: None,
    };
    let seen = act_and_see(log, desk, triple_click, "triple_click", |l| {
        event(l, "canvas", "release").len() == 3 && !event(l, "canvas", "triple").is_empty()
    });
    // Tk runs the most specific binding: the third press is the triple.
    let presses = event(&seen, "canvas", "press");
    assert_eq!(presses.len(), 2, "{seen:?}");
    assert!(
        presses.iter().all(|e| e["num"] == 1 && at(e) == c),
        "{seen:?}"
    );
    let triple = event(&seen, "canvas", "triple");
    assert_eq!((triple.len(), at(triple[0])), (1, c), "{seen:?}");

    let (from, to) = ([cx + 30, cy + 100], [cx + 280, cy + 40]);
    let n = log.lines().len();
    let down = Action::LeftMouseDown {
        coordinate: Some(from),
    };
    let seen = act_and_see(log, desk, down, "left_mouse_down", |l| {
        !event(l, "canvas", "press").is_empty()
    });
    let press = event(&seen, "canvas", "press");
    assert_eq!(
        (press[0]["num"].as_u64(), at(press[0])),
        (Some(1), from.map(u64::from))
    );
    for step in [[cx + 150, cy + 70], to] {
        desk.act(Action::MouseMove { coordinate: step }).unwrap();
    }
    // The button is still down: moves are drags, and nothing was released.
    let seen = log.wait(n, "mouse_move with the button down", |l| {
        event(l, "canvas", "motion")
            .iter()
            .any(|e| at(e) == to.map(u64::from))
    });
    assert!(event(&seen, "canvas", "release").is_empty(), "{seen:?}");
    desk.act(Action::LeftMouseUp { coordinate: None }).unwrap();
    let seen = log.wait(n, "left_mouse_up", |l| {
        !event(l, "canvas", "release").is_empty()
    });
    let release = event(&seen, "canvas", "release");
    assert_eq!(release.len(), 1, "{seen:?}");
    assert_eq!(
        (release[0]["num"].as_u64(), at(release[0])),
        (Some(1), to.map(u64::from))
    );
    assert_eq!(event(&seen, "canvas", "press").len(), 1, "{seen:?}");
}

/// `hold_key` holds its chord for its duration (the X server's times of
/// the press and the release are at least that far apart), and `wait`
/// takes its duration. The entry has the keyboard focus.
fn holds_and_waits(log: &TkLog<'_>, desk: &mut Desktop) {
    let shift = |e: &&Value| e["keysym"].as_str().is_some_and(|k| k.starts_with("Shift"));
    let n = log.lines().len();
    let started = Instant::now();
    let r = desk.act(Action::HoldKey {
        text: "shift".into(),
        duration: 1.5,
    });
    assert_eq!(r.unwrap(), ActionResult::Done);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let seen = log.wait(n, "hold_key shift 1.5", |l| {
        event(l, "entry", "keyup").iter().any(shift)
    });
    let down: Vec<_> = event(&seen, "entry", "key")
        .into_iter()
        .filter(shift)
        .collect();
    let up: Vec<_> = event(&seen, "entry", "keyup")
        .into_iter()
        .filter(shift)
        .collect();
    assert_eq!((down.len(), up.len()), (1, 1), "{seen:?}");
    let time = |e: &Value| e["t"].as_u64().expect("an event time");
    let held = time(up[0]).wrapping_sub(time(down[0]));
    assert!(
        (1500..60_000).contains(&held),
        "shift held {held} ms (the X server's times): {seen:?}"
    );

    let n = log.lines().len();
    let started = Instant::now();
    let r = desk.act(Action::Wait { duration: 1.0 });
    assert_eq!(r.unwrap(), ActionResult::Done);
    assert!(started.elapsed() >= Duration::from_secs(1));
    // Waiting sends nothing.
    std::thread::sleep(Duration::from_millis(500));
    let after = log.lines();
    let events: Vec<_> = after[n..]
        .iter()
        .filter(|l| l.get("event").is_some())
        .collect();
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn the_pointer_round_trips_through_screenshot_scaling() {
    if !desktop_ready() {
        return;
    }
    let d = DesktopSession::start("scale", "1280x800");
    let log = start_tk(&d);
    let scaled = DesktopOptions {
        max_size: Some([640, 640]),
        ..Default::default()
    };
    let mut small = d.desktop(scaled);
    let mut full = d.desktop(DesktopOptions::default());
    assert_eq!(small.image_size().unwrap(), [640, 400]);

    // Unscaled: the pointer is where it was sent.
    full.act(Action::MouseMove {
        coordinate: [321, 123],
    })
    .unwrap();
    assert_eq!(
        full.act(Action::CursorPosition).unwrap(),
        ActionResult::Position { x: 321, y: 123 }
    );

    // Scaled: the same point comes back, and the screen pointer is at its image.
    small
        .act(Action::MouseMove {
            coordinate: [100, 50],
        })
        .unwrap();
    assert_eq!(
        small.act(Action::CursorPosition).unwrap(),
        ActionResult::Position { x: 100, y: 50 }
    );
    let ActionResult::Position { x, y } = full.act(Action::CursorPosition).unwrap() else {
        panic!("not a position");
    };
    assert!(
        (200..202).contains(&x) && (100..102).contains(&y),
        "screen pointer at {x},{y}"
    );
    let (png, w, h) = small.screenshot().unwrap();
    assert_eq!((w, h), (640, 400));
    assert_eq!(decode_png(&png).0, 640);

    // A click at the button's place in the scaled image lands on the button.
    let (button, [bx, by, bw, bh]) = log.widget("button");
    let in_image = [button[0] / 2, button[1] / 2];
    let n = log.lines().len();
    small
        .act(Action::LeftClick {
            coordinate: Some(in_image),
            text: None,
        })
        .unwrap();
    let seen = log.wait(n, "scaled left_click", |l| {
        !event(l, "button", "press").is_empty()
    });
    let [x, y] = at(event(&seen, "button", "press")[0]);
    let inside = (u64::from(bx)..u64::from(bx + bw)).contains(&x)
        && (u64::from(by)..u64::from(by + bh)).contains(&y);
    assert!(
        inside,
        "click at {x},{y} is off the button {bx},{by} {bw}x{bh}"
    );
    assert!(x.abs_diff(u64::from(button[0])) <= 2 && y.abs_diff(u64::from(button[1])) <= 2);

    // The CLI does the same: coordinates in the scaled image, JSON out.
    nook_ok(&[
        "desktop",
        "do",
        &d.0,
        "--max-size",
        "640x640",
        "mouse_move",
        "30",
        "40",
    ]);
    let out = nook_ok(&[
        "desktop",
        "do",
        &d.0,
        "--max-size",
        "640x640",
        "--json",
        "cursor_position",
    ]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["x"].as_u64(), v["y"].as_u64()),
        (Some("position"), Some(30), Some(40))
    );
    let off = nook_out(&[
        "desktop",
        "do",
        &d.0,
        "--max-size",
        "640x640",
        "mouse_move",
        "640",
        "10",
    ]);
    assert_eq!(off.status.code(), Some(125));
    assert!(
        text(&off.stderr).contains("off the 640x400 screenshot"),
        "{}",
        text(&off.stderr)
    );
}
