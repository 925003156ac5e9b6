//! Desktop actions against a real X server: an `Xvfb` started on a free
//! display for each test (skipped, with a reason, where Xvfb is missing).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nook_proto::{DesktopAction, DesktopRequest, DesktopResult, ScrollDirection};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    ChangeWindowAttributesAux, ConnectionExt as _, CreateWindowAux, EventMask, InputFocus,
    WindowClass,
};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::actions::Session;
use super::{DesktopFailure, Outcome};

struct Xvfb {
    child: Child,
    display: String,
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Xvfb of 640x480x24 on a display no one uses, or `None` (printed).
fn xvfb() -> Option<Xvfb> {
    if Command::new("Xvfb")
        .arg("-help")
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("skipped: no Xvfb on this machine (apt-get install xvfb)");
        return None;
    }
    // Each test of this process tries its own numbers (others' Xvfbs
    // would answer a connection just as well).
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 200 + (std::process::id() % 100) * 50 + NEXT.fetch_add(10, Ordering::Relaxed);
    for n in base..base + 10 {
        if std::path::Path::new(&format!("/tmp/.X{n}-lock")).exists() {
            continue;
        }
        let mut child = Command::new("Xvfb")
            .args([
                &format!(":{n}"),
                "-screen",
                "0",
                "640x480x24",
                "-nolisten",
                "tcp",
                "-noreset",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn Xvfb");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break; // display taken meanwhile: try the next
            }
            if RustConnection::connect(Some(&format!(":{n}"))).is_ok() {
                return Some(Xvfb {
                    child,
                    display: format!(":{n}"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("no free X display for Xvfb");
}

fn run(s: &mut Session, x: &Xvfb, action: DesktopAction) -> Result<Outcome, DesktopFailure> {
    let mut req = DesktopRequest::new(action);
    req.display = Some(x.display.clone());
    s.perform(&req)
}

fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut r = png::Decoder::new(std::io::Cursor::new(png_bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Paints the root window of `x` in `pixel` (0xRRGGBB); the connection
/// that did it (which must stay open) and the root.
fn paint_root(x: &Xvfb, pixel: u32) -> (RustConnection, u32) {
    let (c, n) = RustConnection::connect(Some(&x.display)).unwrap();
    let root = c.setup().roots[n].root;
    c.change_window_attributes(
        root,
        &ChangeWindowAttributesAux::new().background_pixel(pixel),
    )
    .unwrap();
    c.clear_area(false, root, 0, 0, 0, 0).unwrap();
    c.sync().unwrap();
    (c, root)
}

#[test]
fn screenshots_show_the_screen_full_and_scaled() {
    let Some(x) = xvfb() else { return };
    let (_c, _root) = paint_root(&x, 0xff0000);

    let mut s = Session::default();
    let o = run(&mut s, &x, DesktopAction::Screenshot).unwrap();
    assert_eq!(o.reply.screen, [640, 480]);
    let (w, h, px) = decode(&o.png);
    assert_eq!((w, h), (640, 480));
    assert!(px.chunks(3).all(|p| p == [255, 0, 0]), "every pixel red");
    assert_eq!(
        o.reply.result,
        DesktopResult::Image {
            width: 640,
            height: 480,
            bytes: o.png.len() as u64
        }
    );

    let mut req = DesktopRequest::new(DesktopAction::Screenshot);
    req.display = Some(x.display.clone());
    req.max_image_size = Some([320, 320]);
    req.settle_ms = Some(2000);
    let o = s.perform(&req).unwrap();
    let (w, h, px) = decode(&o.png);
    assert_eq!((w, h), (320, 240));
    assert!(px.chunks(3).all(|p| p == [255, 0, 0]));

    let o = run(
        &mut s,
        &x,
        DesktopAction::Zoom {
            region: [10, 20, 110, 70],
        },
    )
    .unwrap();
    assert_eq!(decode(&o.png).0, 100);
    assert_eq!(decode(&o.png).1, 50);
    let bad = run(
        &mut s,
        &x,
        DesktopAction::Zoom {
            region: [10, 20, 700, 70],
        },
    );
    assert!(matches!(bad, Err(DesktopFailure::BadRequest(_))), "{bad:?}");
}

#[test]
fn frames_come_through_shared_memory_and_match_the_socket_path() {
    let Some(x) = xvfb() else { return };
    let (c, root) = paint_root(&x, 0x123456);
    let mut d = super::x11::Display::connect(&x.display).unwrap();
    let region = [10, 20, 110, 70];
    let shared = d.capture(region, [100, 50]).unwrap();
    assert!(d.shares_memory(), "Xvfb offers MIT-SHM with fd passing");
    assert_eq!((shared.width, shared.height), (100, 50));
    assert!(shared.pixels.chunks(3).all(|p| p == [0x12, 0x34, 0x56]));
    // The socket path (GetImage) gives the same pixels.
    let reply = c
        .get_image(
            x11rb::protocol::xproto::ImageFormat::Z_PIXMAP,
            root,
            10,
            20,
            100,
            50,
            !0,
        )
        .unwrap()
        .reply()
        .unwrap();
    assert_eq!(d.to_rgb(region, &reply.data, [100, 50]).unwrap(), shared);
    let half = d.capture(region, [50, 25]).unwrap();
    assert_eq!((half.width, half.height), (50, 25));
    assert!(half.pixels.chunks(3).all(|p| p == [0x12, 0x34, 0x56]));
}

#[test]
fn the_pointer_goes_where_it_is_sent() {
    let Some(x) = xvfb() else { return };
    let mut s = Session::default();
    run(
        &mut s,
        &x,
        DesktopAction::MouseMove {
            coordinate: [123, 45],
        },
    )
    .unwrap();
    let o = run(&mut s, &x, DesktopAction::CursorPosition).unwrap();
    assert_eq!(o.reply.result, DesktopResult::Position { x: 123, y: 45 });
    let off = run(
        &mut s,
        &x,
        DesktopAction::MouseMove {
            coordinate: [640, 0],
        },
    );
    assert!(matches!(off, Err(DesktopFailure::BadRequest(_))), "{off:?}");
    let unknown = run(
        &mut s,
        &x,
        DesktopAction::Key {
            text: "ctrl+bogus".into(),
        },
    );
    assert!(
        matches!(unknown, Err(DesktopFailure::BadRequest(_))),
        "{unknown:?}"
    );
}

#[test]
fn no_display_is_reported_as_such() {
    let mut s = Session::default();
    let mut req = DesktopRequest::new(DesktopAction::CursorPosition);
    req.display = Some(":1999".into());
    assert!(matches!(s.perform(&req), Err(DesktopFailure::NoDisplay(_))));
}

/// What a test window saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Button {
        button: u8,
        x: i16,
        y: i16,
        state: u16,
    },
    Release {
        button: u8,
        x: i16,
        y: i16,
    },
    Key {
        keysym: u32,
        state: u16,
    },
}

/// A window covering the screen that records buttons and keys.
struct Watcher {
    c: RustConnection,
    win: u32,
}

impl Watcher {
    fn new(x: &Xvfb) -> Watcher {
        let (c, n) = RustConnection::connect(Some(&x.display)).unwrap();
        let screen = &c.setup().roots[n];
        let (root, visual) = (screen.root, screen.root_visual);
        let win = c.generate_id().unwrap();
        let mask = EventMask::BUTTON_PRESS | EventMask::BUTTON_RELEASE | EventMask::KEY_PRESS;
        c.create_window(
            0,
            win,
            root,
            0,
            0,
            640,
            480,
            0,
            WindowClass::INPUT_OUTPUT,
            visual,
            &CreateWindowAux::new().override_redirect(1).event_mask(mask),
        )
        .unwrap();
        c.map_window(win).unwrap();
        c.sync().unwrap();
        c.set_input_focus(InputFocus::POINTER_ROOT, win, 0u32)
            .unwrap();
        c.sync().unwrap();
        Watcher { c, win }
    }

    /// The events that arrive within a moment, keys as keysyms (level 0 or
    /// 1 by the shift bit of their state).
    fn seen(&self) -> Vec<Seen> {
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut raw = Vec::new();
        while Instant::now() < deadline {
            match self.c.poll_for_event().unwrap() {
                Some(e) => raw.push(e),
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let setup = self.c.setup();
        let (min, count) = (setup.min_keycode, setup.max_keycode - setup.min_keycode + 1);
        let map = self
            .c
            .get_keyboard_mapping(min, count)
            .unwrap()
            .reply()
            .unwrap();
        let per = usize::from(map.keysyms_per_keycode);
        raw.into_iter()
            .filter_map(|e| match e {
                Event::ButtonPress(b) if b.event == self.win => Some(Seen::Button {
                    button: b.detail,
                    x: b.event_x,
                    y: b.event_y,
                    state: u16::from(b.state),
                }),
                Event::ButtonRelease(b) if b.event == self.win => Some(Seen::Release {
                    button: b.detail,
                    x: b.event_x,
                    y: b.event_y,
                }),
                Event::KeyPress(k) => {
                    let state = u16::from(k.state);
                    let level = usize::from(state & 1);
                    let i = usize::from(k.detail - min) * per + level;
                    let keysym = map.keysyms[i];
                    // Modifier keys themselves are not what a test asserts.
                    (!(0xffe1..=0xffee).contains(&keysym)).then_some(Seen::Key { keysym, state })
                }
                _ => None,
            })
            .collect()
    }
}

#[test]
fn clicks_scrolls_drags_and_keys_reach_a_window() {
    let Some(x) = xvfb() else { return };
    let w = Watcher::new(&x);
    let mut s = Session::default();
    let at = |c| Some(c);
    run(
        &mut s,
        &x,
        DesktopAction::LeftClick {
            coordinate: at([10, 20]),
            text: None,
        },
    )
    .unwrap();
    assert_eq!(
        w.seen(),
        vec![
            Seen::Button {
                button: 1,
                x: 10,
                y: 20,
                state: 0
            },
            Seen::Release {
                button: 1,
                x: 10,
                y: 20
            }
        ]
    );
    run(
        &mut s,
        &x,
        DesktopAction::RightClick {
            coordinate: at([30, 40]),
            text: Some("shift".into()),
        },
    )
    .unwrap();
    let seen = w.seen();
    assert!(
        matches!(seen[0], Seen::Button { button: 3, x: 30, y: 40, state } if state & 1 == 1),
        "{seen:?}"
    );
    run(
        &mut s,
        &x,
        DesktopAction::DoubleClick {
            coordinate: None,
            text: None,
        },
    )
    .unwrap();
    let presses = |v: &[Seen], b: u8| {
        v.iter()
            .filter(|e| matches!(e, Seen::Button { button, .. } if *button == b))
            .count()
    };
    assert_eq!(presses(&w.seen(), 1), 2);
    run(
        &mut s,
        &x,
        DesktopAction::Scroll {
            coordinate: at([50, 60]),
            scroll_direction: ScrollDirection::Down,
            scroll_amount: 3,
            text: None,
        },
    )
    .unwrap();
    assert_eq!(presses(&w.seen(), 5), 3);
    run(
        &mut s,
        &x,
        DesktopAction::LeftClickDrag {
            start_coordinate: [5, 5],
            coordinate: [200, 100],
        },
    )
    .unwrap();
    assert_eq!(
        w.seen(),
        vec![
            Seen::Button {
                button: 1,
                x: 5,
                y: 5,
                state: 0
            },
            Seen::Release {
                button: 1,
                x: 200,
                y: 100
            }
        ]
    );

    run(
        &mut s,
        &x,
        DesktopAction::Type {
            text: "héllo wörld €".into(),
        },
    )
    .unwrap();
    let typed: Vec<u32> = w
        .seen()
        .into_iter()
        .map(|e| match e {
            Seen::Key { keysym, .. } => keysym,
            other => panic!("not a key: {other:?}"),
        })
        .collect();
    let want: Vec<u32> = "héllo wörld €"
        .chars()
        .map(super::keys::keysym_of_char)
        .collect();
    assert_eq!(typed, want);

    run(
        &mut s,
        &x,
        DesktopAction::Key {
            text: "ctrl+a".into(),
        },
    )
    .unwrap();
    let seen = w.seen();
    assert!(
        matches!(seen[..], [Seen::Key { keysym: 0x61, state }] if state & 4 == 4),
        "ctrl+a: {seen:?}"
    );
    run(
        &mut s,
        &x,
        DesktopAction::Key {
            text: "A Return".into(),
        },
    )
    .unwrap();
    assert_eq!(
        w.seen(),
        vec![
            Seen::Key {
                keysym: 0x41,
                state: 1
            },
            Seen::Key {
                keysym: 0xff0d,
                state: 0
            }
        ]
    );
}
