//! The flat input of the computer-use tools (one object with `action` and
//! whichever of `coordinate`, `start_coordinate`, `text`,
//! `scroll_direction`, `scroll_amount`, `duration` and `region` it needs),
//! as the MCP tool `desktop_action` and the daemon's `desktop_action`
//! request take it, turned into an [`Action`] in one place.

use serde::{Deserialize, Serialize};

use super::Action;

/// Guest memory of a desktop unless its creator says otherwise (Firefox
/// wants about this much).
pub const DESKTOP_MEMORY_MIB: u32 = 1024;

/// What each action takes besides `action`, for error messages.
const ACTION_FIELDS: &[(&str, &str)] = &[
    ("screenshot", "no other field"),
    ("key", "`text`: xdotool key names and chords (`Return`, `ctrl+l`)"),
    ("type", "`text`: the text to type"),
    ("mouse_move", "`coordinate`: [x, y]"),
    ("left_click", "`coordinate`?: [x, y], `text`?: keys held"),
    ("right_click", "`coordinate`?: [x, y], `text`?: keys held"),
    ("middle_click", "`coordinate`?: [x, y], `text`?: keys held"),
    ("double_click", "`coordinate`?: [x, y], `text`?: keys held"),
    ("triple_click", "`coordinate`?: [x, y], `text`?: keys held"),
    (
        "left_click_drag",
        "`start_coordinate`: [x, y] and `coordinate`: [x, y]",
    ),
    ("left_mouse_down", "`coordinate`?: [x, y]"),
    ("left_mouse_up", "`coordinate`?: [x, y]"),
    (
        "scroll",
        "`scroll_direction`: up, down, left or right, `scroll_amount`: wheel clicks, `coordinate`?: [x, y], `text`?: keys held",
    ),
    ("hold_key", "`text`: one chord and `duration`: seconds"),
    ("wait", "`duration`: seconds"),
    ("cursor_position", "no other field"),
    ("zoom", "`region`: [x0, y0, x1, y1]"),
];

/// One action in the computer-use tools' flat input. Fields an action does
/// not use are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComputerUseInput {
    /// `screenshot`, `key`, `type`, `mouse_move`, ... `zoom`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinate: Option<[u32; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_coordinate: Option<[u32; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scroll_direction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scroll_amount: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<[u32; 4]>,
}

/// Input that is not an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComputerUseInputError {
    #[error("unknown action `{0}`: send one of {list}", list = action_names())]
    UnknownAction(String),
    #[error("invalid `{action}` action: {reason}; send {fields}")]
    Invalid {
        action: String,
        reason: String,
        fields: &'static str,
    },
}

fn action_names() -> String {
    ACTION_FIELDS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl ComputerUseInput {
    /// The action this input describes, checked by the action's own type.
    pub fn to_action(&self) -> Result<Action, ComputerUseInputError> {
        let Some(&(_, fields)) = ACTION_FIELDS.iter().find(|(n, _)| *n == self.action) else {
            return Err(ComputerUseInputError::UnknownAction(self.action.clone()));
        };
        let invalid = |reason: String| ComputerUseInputError::Invalid {
            action: self.action.clone(),
            reason,
            fields,
        };
        // The input's fields are the action's own names: the action's
        // serde tagging does the checking.
        let value = serde_json::to_value(self).map_err(|e| invalid(e.to_string()))?;
        serde_json::from_value(value).map_err(|e| invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: serde_json::Value) -> ComputerUseInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn flat_input_becomes_actions() {
        let a = input(serde_json::json!({"action": "left_click", "coordinate": [10, 20]}));
        assert_eq!(
            serde_json::to_value(a.to_action().unwrap()).unwrap(),
            serde_json::json!({"action": "left_click", "coordinate": [10, 20]})
        );
        let a = input(
            serde_json::json!({"action": "scroll", "coordinate": [1, 2], "scroll_direction": "down", "scroll_amount": 3}),
        );
        assert!(matches!(
            a.to_action().unwrap(),
            Action::Scroll {
                scroll_amount: 3,
                coordinate: Some([1, 2]),
                ..
            }
        ));
        let a = input(serde_json::json!({"action": "wait", "duration": 1}));
        assert!(matches!(a.to_action().unwrap(), Action::Wait { duration } if duration == 1.0));
        // Fields the action does not use are ignored.
        let a = input(serde_json::json!({"action": "screenshot", "text": "x"}));
        assert!(matches!(a.to_action().unwrap(), Action::Screenshot));
        // Every listed action is one the agent knows.
        for (name, _) in ACTION_FIELDS {
            match input(serde_json::json!({"action": name})).to_action() {
                Ok(_) => {}
                Err(ComputerUseInputError::Invalid { reason, .. }) => {
                    assert!(reason.starts_with("missing field"), "{name}: {reason}")
                }
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }

    #[test]
    fn bad_input_says_what_to_send() {
        for (bad, want) in [
            (
                serde_json::json!({"action": "fly"}),
                "unknown action `fly`: send one of screenshot, key",
            ),
            (
                serde_json::json!({"action": "type"}),
                "invalid `type` action: missing field `text`; send `text`: the text to type",
            ),
            (
                serde_json::json!({"action": "scroll", "scroll_direction": "sideways", "scroll_amount": 1}),
                "unknown variant `sideways`",
            ),
            (
                serde_json::json!({"action": "mouse_move"}),
                "send `coordinate`: [x, y]",
            ),
        ] {
            let e = input(bad.clone()).to_action().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
