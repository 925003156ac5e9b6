//! Actions from command-line words: `left_click 100 200`, `key ctrl+a`,
//! `scroll down 3 640 400`, or one JSON object (`{"action": ...}`).

use nook::{Coordinate, ScrollDirection};

use super::Action;

/// What each action takes after its name, for usage messages.
pub const ACTION_USAGE: &[(&str, &str)] = &[
    ("screenshot", ""),
    (
        "key",
        "KEYS (xdotool names: Return, ctrl+l, alt+F4; several separated by spaces)",
    ),
    ("type", "TEXT"),
    ("mouse_move", "X Y"),
    ("left_click", "[X Y]"),
    ("right_click", "[X Y]"),
    ("middle_click", "[X Y]"),
    ("double_click", "[X Y]"),
    ("triple_click", "[X Y]"),
    ("left_click_drag", "X1 Y1 X2 Y2"),
    ("left_mouse_down", "[X Y]"),
    ("left_mouse_up", "[X Y]"),
    ("scroll", "up|down|left|right AMOUNT [X Y]"),
    ("hold_key", "KEYS SECONDS"),
    ("wait", "SECONDS"),
    ("cursor_position", ""),
    ("zoom", "X0 Y0 X1 Y1"),
];

/// The action `name` with its `args` (coordinates may also be written
/// `X,Y`); `hold` is the keys held during a click or scroll. A `name`
/// starting with `{` is a JSON action and takes no arguments.
pub fn action_from_words(
    name: &str,
    args: &[String],
    hold: Option<&str>,
) -> Result<Action, String> {
    if name.trim_start().starts_with('{') {
        if !args.is_empty() {
            return Err("a JSON action takes no further arguments".into());
        }
        return serde_json::from_str(name).map_err(|e| format!("invalid JSON action: {e}"));
    }
    let text = hold.map(str::to_string);
    let usage = || {
        let (_, u) = ACTION_USAGE
            .iter()
            .find(|(n, _)| *n == name)
            .copied()
            .unwrap_or(("", ""));
        format!("usage: {name} {u}").trim_end().to_string()
    };
    // Words split at commas, so `100,200` is two numbers.
    let words: Vec<&str> = args
        .iter()
        .flat_map(|a| a.split(','))
        .filter(|w| !w.is_empty())
        .collect();
    let nums = |ws: &[&str]| -> Result<Vec<u32>, String> {
        ws.iter()
            .map(|w| {
                w.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("`{w}` is not a pixel coordinate; {}", usage()))
            })
            .collect()
    };
    let point = |ws: &[&str]| -> Result<Option<Coordinate>, String> {
        match nums(ws)?[..] {
            [] => Ok(None),
            [x, y] => Ok(Some([x, y])),
            _ => Err(usage()),
        }
    };
    let seconds = |w: &str| -> Result<f64, String> {
        w.parse::<f64>()
            .map_err(|_| format!("`{w}` is not a number of seconds; {}", usage()))
    };
    let joined = || {
        let t = args.join(" ");
        if t.is_empty() {
            Err(usage())
        } else {
            Ok(t)
        }
    };
    let exact = |n: usize| {
        if words.len() == n {
            Ok(())
        } else {
            Err(usage())
        }
    };
    Ok(match name {
        "screenshot" => exact(0).map(|_| Action::Screenshot)?,
        "cursor_position" => exact(0).map(|_| Action::CursorPosition)?,
        "key" => Action::Key { text: joined()? },
        "type" => Action::Type { text: joined()? },
        "mouse_move" => Action::MouseMove {
            coordinate: point(&words)?.ok_or_else(usage)?,
        },
        "left_click" => Action::LeftClick {
            coordinate: point(&words)?,
            text,
        },
        "right_click" => Action::RightClick {
            coordinate: point(&words)?,
            text,
        },
        "middle_click" => Action::MiddleClick {
            coordinate: point(&words)?,
            text,
        },
        "double_click" => Action::DoubleClick {
            coordinate: point(&words)?,
            text,
        },
        "triple_click" => Action::TripleClick {
            coordinate: point(&words)?,
            text,
        },
        "left_mouse_down" => Action::LeftMouseDown {
            coordinate: point(&words)?,
        },
        "left_mouse_up" => Action::LeftMouseUp {
            coordinate: point(&words)?,
        },
        "left_click_drag" => match nums(&words)?[..] {
            [x0, y0, x1, y1] => Action::LeftClickDrag {
                start_coordinate: [x0, y0],
                coordinate: [x1, y1],
            },
            _ => return Err(usage()),
        },
        "zoom" => match nums(&words)?[..] {
            [x0, y0, x1, y1] => Action::Zoom {
                region: [x0, y0, x1, y1],
            },
            _ => return Err(usage()),
        },
        "scroll" => {
            let [dir, amount, rest @ ..] = &words[..] else {
                return Err(usage());
            };
            let scroll_direction: ScrollDirection =
                serde_json::from_value(serde_json::Value::String(dir.to_string()))
                    .map_err(|_| format!("`{dir}` is not up, down, left or right"))?;
            Action::Scroll {
                coordinate: point(rest)?,
                scroll_direction,
                scroll_amount: nums(&[amount])?[0],
                text,
            }
        }
        "hold_key" => match args {
            [keys, secs] => Action::HoldKey {
                text: keys.clone(),
                duration: seconds(secs)?,
            },
            _ => return Err(usage()),
        },
        "wait" => match args {
            [secs] => Action::Wait {
                duration: seconds(secs)?,
            },
            _ => return Err(usage()),
        },
        other => {
            return Err(format!(
                "unknown action `{other}`: one of {}",
                nook::DesktopAction::NAMES.join(", ")
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(name: &str, args: &[&str]) -> Result<Action, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        action_from_words(name, &args, None)
    }

    #[test]
    fn every_action_parses_from_words() {
        assert_eq!(words("screenshot", &[]).unwrap(), Action::Screenshot);
        assert_eq!(
            words("left_click", &["100", "200"]).unwrap(),
            Action::LeftClick {
                coordinate: Some([100, 200]),
                text: None
            }
        );
        assert_eq!(
            words("double_click", &["100,200"]).unwrap(),
            Action::DoubleClick {
                coordinate: Some([100, 200]),
                text: None
            }
        );
        assert_eq!(
            words("right_click", &[]).unwrap(),
            Action::RightClick {
                coordinate: None,
                text: None
            }
        );
        assert_eq!(
            words("type", &["héllo", "wörld"]).unwrap(),
            Action::Type {
                text: "héllo wörld".into()
            }
        );
        assert_eq!(
            words("scroll", &["down", "3", "10", "20"]).unwrap(),
            Action::Scroll {
                coordinate: Some([10, 20]),
                scroll_direction: ScrollDirection::Down,
                scroll_amount: 3,
                text: None
            }
        );
        assert_eq!(
            words("left_click_drag", &["1", "2", "3", "4"]).unwrap(),
            Action::LeftClickDrag {
                start_coordinate: [1, 2],
                coordinate: [3, 4]
            }
        );
        assert_eq!(
            words("hold_key", &["shift", "0.5"]).unwrap(),
            Action::HoldKey {
                text: "shift".into(),
                duration: 0.5
            }
        );
        assert_eq!(
            words("wait", &["1"]).unwrap(),
            Action::Wait { duration: 1.0 }
        );
        assert_eq!(
            words("zoom", &["0", "0", "10", "10"]).unwrap(),
            Action::Zoom {
                region: [0, 0, 10, 10]
            }
        );
        assert_eq!(
            words(r#"{"action":"mouse_move","coordinate":[5,6]}"#, &[]).unwrap(),
            Action::MouseMove { coordinate: [5, 6] }
        );
        let held = action_from_words("left_click", &[], Some("shift")).unwrap();
        assert_eq!(
            held,
            Action::LeftClick {
                coordinate: None,
                text: Some("shift".into())
            }
        );
    }

    #[test]
    fn mistakes_say_what_is_expected() {
        assert!(words("mouse_move", &["1"])
            .unwrap_err()
            .contains("usage: mouse_move X Y"));
        assert!(words("left_click", &["a", "b"])
            .unwrap_err()
            .contains("not a pixel coordinate"));
        assert!(words("scroll", &["sideways", "3"])
            .unwrap_err()
            .contains("up, down"));
        assert!(words("fly", &[])
            .unwrap_err()
            .contains("unknown action `fly`"));
        assert!(words("key", &[]).is_err());
        assert!(words("screenshot", &["1"]).is_err());
    }
}
