//! Desktop actions: screenshots, mouse and keyboard on the guest's X
//! display, carried to the agent, which talks X11 itself.
//!
//! ```text
//! host Desktop{request}           guest DesktopImage* DesktopDone{reply}
//! any failure:                    guest Error (last frame)
//! ```
//!
//! The action vocabulary is the one of the computer-use tools agents are
//! trained on: an action is a JSON object tagged by `action`, with the
//! fields `coordinate`, `start_coordinate`, `text`, `scroll_direction`,
//! `scroll_amount`, `duration` and `region` where it needs them. In a
//! request to the guest every coordinate is in screen pixels; scaling to a
//! smaller screenshot size is the host's business ([`fit_within`] is the
//! rule both sides use). Images travel as PNG bytes in `DesktopImage`
//! frames of at most [`crate::STDIO_CHUNK`] bytes each.

use serde::{Deserialize, Serialize};

/// The X display the agent drives when a request names none.
pub const DEFAULT_DISPLAY: &str = ":0";

/// Longest a `wait` or `hold_key` may last, in seconds.
pub const MAX_DURATION_S: f64 = 100.0;

/// Most clicks one `scroll` may send.
pub const MAX_SCROLL_AMOUNT: u32 = 100;

/// Longest a request may wait for the screen to settle, in milliseconds.
pub const MAX_SETTLE_MS: u64 = 30_000;

/// A point on the screen: `[x, y]` in pixels from the top left corner.
pub type Coordinate = [u32; 2];

/// Which way a `scroll` turns the wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScrollDirection {
    Up,
    Down,
    Left,
    Right,
}

/// One desktop action, tagged by `action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum DesktopAction {
    /// A PNG of the whole screen.
    Screenshot,
    /// Press a key or chord and release it: xdotool names joined by `+`
    /// (`Return`, `ctrl+l`, `ctrl+shift+t`, `alt+F4`); several chords may
    /// be separated by spaces.
    Key {
        text: String,
    },
    /// Type any UTF-8 text.
    Type {
        text: String,
    },
    MouseMove {
        coordinate: Coordinate,
    },
    /// Click at `coordinate` (where the pointer is when absent), holding
    /// the keys of `text` (`shift`, `ctrl+alt`) meanwhile.
    LeftClick {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coordinate: Option<Coordinate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    RightClick {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coordinate: Option<Coordinate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    MiddleClick {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coordinate: Option<Coordinate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    DoubleClick {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coordinate: Option<Coordinate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    TripleClick {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coordinate: Option<Coordinate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    /// Press the left button at `start_coordinate`, move to `coordinate`,
    /// release.
    LeftClickDrag {
        start_coordinate: Coordinate,
        coordinate: Coordinate,
    },
    LeftMouseDown {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coordinate: Option<Coordinate>,
    },
    LeftMouseUp {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coordinate: Option<Coordinate>,
    },
    /// Turn the wheel `scroll_amount` clicks at `coordinate`, holding the
    /// keys of `text` meanwhile.
    Scroll {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coordinate: Option<Coordinate>,
        scroll_direction: ScrollDirection,
        scroll_amount: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    /// Hold the keys of `text` down for `duration` seconds.
    HoldKey {
        text: String,
        duration: f64,
    },
    /// Do nothing for `duration` seconds (then settle, if asked).
    Wait {
        duration: f64,
    },
    /// Where the pointer is.
    CursorPosition,
    /// A PNG of `region` (`[x0, y0, x1, y1]`, corners included and
    /// excluded) at full resolution.
    Zoom {
        region: [u32; 4],
    },
}

impl DesktopAction {
    /// The serde name of the action (`left_click`, ...).
    pub fn name(&self) -> &'static str {
        use DesktopAction::*;
        match self {
            Screenshot => "screenshot",
            Key { .. } => "key",
            Type { .. } => "type",
            MouseMove { .. } => "mouse_move",
            LeftClick { .. } => "left_click",
            RightClick { .. } => "right_click",
            MiddleClick { .. } => "middle_click",
            DoubleClick { .. } => "double_click",
            TripleClick { .. } => "triple_click",
            LeftClickDrag { .. } => "left_click_drag",
            LeftMouseDown { .. } => "left_mouse_down",
            LeftMouseUp { .. } => "left_mouse_up",
            Scroll { .. } => "scroll",
            HoldKey { .. } => "hold_key",
            Wait { .. } => "wait",
            CursorPosition => "cursor_position",
            Zoom { .. } => "zoom",
        }
    }

    /// Every action name, in the order of the vocabulary.
    pub const NAMES: [&'static str; 17] = [
        "screenshot",
        "key",
        "type",
        "mouse_move",
        "left_click",
        "right_click",
        "middle_click",
        "double_click",
        "triple_click",
        "left_click_drag",
        "left_mouse_down",
        "left_mouse_up",
        "scroll",
        "hold_key",
        "wait",
        "cursor_position",
        "zoom",
    ];

    /// The same action with every point passed through `f`; a `zoom`
    /// region is left as it is (its edges scale with [`scale_edge`]).
    pub fn map_points(self, f: impl Fn(Coordinate) -> Coordinate) -> DesktopAction {
        use DesktopAction::*;
        let opt = |c: Option<Coordinate>| c.map(&f);
        match self {
            MouseMove { coordinate } => MouseMove {
                coordinate: f(coordinate),
            },
            LeftClick { coordinate, text } => LeftClick {
                coordinate: opt(coordinate),
                text,
            },
            RightClick { coordinate, text } => RightClick {
                coordinate: opt(coordinate),
                text,
            },
            MiddleClick { coordinate, text } => MiddleClick {
                coordinate: opt(coordinate),
                text,
            },
            DoubleClick { coordinate, text } => DoubleClick {
                coordinate: opt(coordinate),
                text,
            },
            TripleClick { coordinate, text } => TripleClick {
                coordinate: opt(coordinate),
                text,
            },
            LeftClickDrag {
                start_coordinate,
                coordinate,
            } => LeftClickDrag {
                start_coordinate: f(start_coordinate),
                coordinate: f(coordinate),
            },
            LeftMouseDown { coordinate } => LeftMouseDown {
                coordinate: opt(coordinate),
            },
            LeftMouseUp { coordinate } => LeftMouseUp {
                coordinate: opt(coordinate),
            },
            Scroll {
                coordinate,
                scroll_direction,
                scroll_amount,
                text,
            } => Scroll {
                coordinate: opt(coordinate),
                scroll_direction,
                scroll_amount,
                text,
            },
            other => other,
        }
    }
}

/// A desktop request, the payload of a `Desktop` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesktopRequest {
    /// The action, coordinates in screen pixels.
    pub action: DesktopAction,
    /// The X display (`:0` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// Scale an image down to fit within `[width, height]` (aspect kept,
    /// never enlarged; see [`fit_within`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_image_size: Option<[u32; 2]>,
    /// After the action, wait (up to this many milliseconds, at most
    /// [`MAX_SETTLE_MS`]) until the screen stops changing before answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_ms: Option<u64>,
}

impl DesktopRequest {
    /// A request for `action` on the default display, no scaling, no settle.
    pub fn new(action: DesktopAction) -> DesktopRequest {
        DesktopRequest {
            action,
            display: None,
            max_image_size: None,
            settle_ms: None,
        }
    }
}

/// What an action produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DesktopResult {
    /// A PNG of this size, sent in the `DesktopImage` frames before.
    Image { width: u32, height: u32, bytes: u64 },
    /// The pointer's position, in screen pixels.
    Position { x: u32, y: u32 },
    /// The action was carried out (the X server has processed its input).
    Done,
}

/// The last frame of a successful desktop request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesktopReply {
    /// The screen's size, `[width, height]` in pixels.
    pub screen: [u32; 2],
    pub result: DesktopResult,
}

/// The size an image of `size` gets when scaled down to fit within `max`:
/// the aspect ratio kept (rounded), never enlarged, never below 1x1.
pub fn fit_within(size: [u32; 2], max: [u32; 2]) -> [u32; 2] {
    let [w, h] = size.map(u64::from);
    let [mw, mh] = max.map(|m| u64::from(m.max(1)));
    if w <= mw && h <= mh {
        return size;
    }
    // The tighter of the two bounds decides: compare w/mw with h/mh.
    let (nw, nh) = if w * mh >= h * mw {
        (mw, (h * mw + w / 2) / w.max(1))
    } else {
        ((w * mh + h / 2) / h.max(1), mh)
    };
    [nw.max(1) as u32, nh.max(1) as u32]
}

/// Maps an edge position `v` (0..=`from`) of a space `from` wide to one
/// `to` wide, rounded.
pub fn scale_edge(v: u32, from: u32, to: u32) -> u32 {
    if from == 0 {
        return v;
    }
    ((u64::from(v) * u64::from(to) + u64::from(from) / 2) / u64::from(from)) as u32
}

/// Maps coordinate `c` from a space of size `from` to one of size `to`
/// (pixel centres kept), clamped inside `to`.
pub fn scale_point(c: Coordinate, from: [u32; 2], to: [u32; 2]) -> Coordinate {
    let axis = |v: u32, f: u32, t: u32| -> u32 {
        if f == t || f == 0 {
            return v.min(t.saturating_sub(1));
        }
        // The centre of pixel v, (v + 0.5) * t / f, floored.
        let scaled = ((2 * u64::from(v) + 1) * u64::from(t)) / (2 * u64::from(f));
        (scaled as u32).min(t.saturating_sub(1))
    };
    [axis(c[0], from[0], to[0]), axis(c[1], from[1], to[1])]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_use_the_computer_use_vocabulary() {
        let a: DesktopAction = serde_json::from_str(
            r#"{"action":"scroll","coordinate":[10,20],"scroll_direction":"down","scroll_amount":3}"#,
        )
        .unwrap();
        assert_eq!(
            a,
            DesktopAction::Scroll {
                coordinate: Some([10, 20]),
                scroll_direction: ScrollDirection::Down,
                scroll_amount: 3,
                text: None
            }
        );
        let a: DesktopAction = serde_json::from_str(r#"{"action":"left_click"}"#).unwrap();
        assert_eq!(
            a,
            DesktopAction::LeftClick {
                coordinate: None,
                text: None
            }
        );
        assert!(serde_json::from_str::<DesktopAction>(r#"{"action":"fly"}"#).is_err());
        assert!(serde_json::from_str::<DesktopAction>(
            r#"{"action":"mouse_move","coordinate":[-1,2]}"#
        )
        .is_err());
    }

    #[test]
    fn every_name_is_the_serde_tag() {
        let samples = [
            DesktopAction::Screenshot,
            DesktopAction::Key { text: "a".into() },
            DesktopAction::Type { text: "a".into() },
            DesktopAction::MouseMove { coordinate: [1, 2] },
            DesktopAction::LeftClick {
                coordinate: None,
                text: None,
            },
            DesktopAction::RightClick {
                coordinate: None,
                text: None,
            },
            DesktopAction::MiddleClick {
                coordinate: None,
                text: None,
            },
            DesktopAction::DoubleClick {
                coordinate: None,
                text: None,
            },
            DesktopAction::TripleClick {
                coordinate: None,
                text: None,
            },
            DesktopAction::LeftClickDrag {
                start_coordinate: [0, 0],
                coordinate: [1, 1],
            },
            DesktopAction::LeftMouseDown { coordinate: None },
            DesktopAction::LeftMouseUp { coordinate: None },
            DesktopAction::Scroll {
                coordinate: None,
                scroll_direction: ScrollDirection::Up,
                scroll_amount: 1,
                text: None,
            },
            DesktopAction::HoldKey {
                text: "a".into(),
                duration: 0.5,
            },
            DesktopAction::Wait { duration: 1.0 },
            DesktopAction::CursorPosition,
            DesktopAction::Zoom {
                region: [0, 0, 2, 2],
            },
        ];
        for (a, name) in samples.iter().zip(DesktopAction::NAMES) {
            assert_eq!(a.name(), name);
            let v = serde_json::to_value(a).unwrap();
            assert_eq!(v["action"], name);
            let back: DesktopAction = serde_json::from_value(v).unwrap();
            assert_eq!(&back, a);
        }
    }

    #[test]
    fn fit_keeps_the_aspect_and_never_enlarges() {
        assert_eq!(fit_within([1280, 800], [1024, 768]), [1024, 640]);
        assert_eq!(fit_within([1280, 800], [2000, 2000]), [1280, 800]);
        assert_eq!(fit_within([800, 1280], [1024, 768]), [480, 768]);
        assert_eq!(fit_within([1280, 800], [640, 640]), [640, 400]);
        assert_eq!(fit_within([1000, 1], [10, 10]), [10, 1]);
        assert_eq!(fit_within([5, 5], [0, 0]), [1, 1]);
    }

    #[test]
    fn points_round_trip_through_the_scaling() {
        let (screen, shot) = ([1280, 800], [1024, 640]);
        for p in [[0, 0], [100, 200], [1023, 639], [512, 320]] {
            let real = scale_point(p, shot, screen);
            assert_eq!(scale_point(real, screen, shot), p, "{p:?} -> {real:?}");
        }
        assert_eq!(scale_point([5000, 5000], shot, screen), [1279, 799]);
        assert_eq!(scale_point([3, 4], screen, screen), [3, 4]);
    }

    #[test]
    fn map_points_reaches_every_coordinate() {
        let a = DesktopAction::LeftClickDrag {
            start_coordinate: [1, 2],
            coordinate: [3, 4],
        }
        .map_points(|[x, y]| [x * 10, y * 10]);
        assert_eq!(
            a,
            DesktopAction::LeftClickDrag {
                start_coordinate: [10, 20],
                coordinate: [30, 40]
            }
        );
        let z = DesktopAction::Zoom {
            region: [1, 2, 3, 4],
        };
        assert_eq!(z.clone().map_points(|[x, y]| [x + 1, y + 1]), z);
        assert_eq!(scale_edge(1024, 1024, 1280), 1280);
        assert_eq!(scale_edge(0, 1024, 1280), 0);
        assert_eq!(scale_edge(512, 1024, 1280), 640);
    }
}
