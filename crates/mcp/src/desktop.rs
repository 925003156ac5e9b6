//! The desktop tools: `desktop_create` (a sandbox with an X display,
//! [`nook_serve::desktop::start_desktop`]), `desktop_action` (one action of
//! the computer-use vocabulary through [`nook_serve::desktop::Desktop`];
//! screenshots come back as MCP image content) and `desktop_destroy`.
//! Desktops are sandboxes: their id works with `sandbox_exec` and the file
//! tools, and they are destroyed with the client's other sandboxes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use nook_serve::desktop::{
    Action, ActionResult, ComputerUseInput, Desktop, DesktopOptions, DisplaySize,
    DESKTOP_MEMORY_MIB,
};
use rmcp::model::ContentBlock;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::ToolError;
use crate::registry::{Render, ToolRegistry};
use crate::tools::ToolContext;
use crate::types::SandboxCreateArgs;

/// `desktop_create`: a sandbox with a display.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DesktopCreateArgs {
    /// Display size in pixels, `[width, height]` (default `[1280, 800]`).
    #[serde(default)]
    pub size: Option<[u32; 2]>,
    /// Scale screenshots down to fit within `[width, height]`; the coordinates of later actions are then in the scaled screenshot's pixels (scaled back to the screen by the server).
    #[serde(default)]
    pub max_screenshot_size: Option<[u32; 2]>,
    /// Image to boot. Default: nook's desktop image (Debian with Xvfb, Openbox, xterm, Firefox ESR; built on first use).
    #[serde(default)]
    pub image: Option<String>,
    /// Guest memory in MiB (default 1024).
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// Number of vCPUs (default: the server's, 1).
    #[serde(default)]
    pub cpus: Option<u8>,
}

/// A desktop that is up.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DesktopCreated {
    /// Pass this to desktop_action and desktop_destroy (and, as `sandbox_id`, to sandbox_exec and the file tools).
    pub desktop_id: String,
    /// The display's size in pixels.
    pub width: u32,
    pub height: u32,
    /// The size screenshots come in (the space of action coordinates).
    pub screenshot_width: u32,
    pub screenshot_height: u32,
    pub engine: String,
    pub memory_mib: u32,
}

impl Render for DesktopCreated {
    fn render(&self) -> String {
        format!(
            "desktop {} is up: display {}x{}, screenshots and coordinates {}x{}",
            self.desktop_id, self.width, self.height, self.screenshot_width, self.screenshot_height
        )
    }
}

/// `desktop_action`: one action, in the computer-use tool's vocabulary.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DesktopActionArgs {
    pub desktop_id: String,
    /// screenshot, key, type, mouse_move, left_click, right_click, middle_click, double_click, triple_click, left_click_drag, left_mouse_down, left_mouse_up, scroll, hold_key, wait, cursor_position or zoom.
    pub action: String,
    /// `[x, y]` in screenshot pixels: where to move, click or scroll, or where a drag ends.
    #[serde(default)]
    pub coordinate: Option<[u32; 2]>,
    /// `[x, y]` where a left_click_drag starts.
    #[serde(default)]
    pub start_coordinate: Option<[u32; 2]>,
    /// key: xdotool key names and chords (`Return`, `ctrl+l`); type: the text; hold_key: the keys; clicks and scroll: keys held meanwhile (`shift`).
    #[serde(default)]
    pub text: Option<String>,
    /// scroll: up, down, left or right.
    #[serde(default)]
    pub scroll_direction: Option<String>,
    /// scroll: how many wheel clicks.
    #[serde(default)]
    pub scroll_amount: Option<u32>,
    /// hold_key and wait: seconds.
    #[serde(default)]
    pub duration: Option<f64>,
    /// zoom: `[x0, y0, x1, y1]` in screenshot pixels, shown at full resolution.
    #[serde(default)]
    pub region: Option<[u32; 4]>,
    /// Wait up to this many milliseconds after the action until the screen stops changing.
    #[serde(default)]
    pub settle_ms: Option<u64>,
}

impl DesktopActionArgs {
    /// The action these arguments describe (the daemon's `desktop_action`
    /// maps the same input with the same function).
    fn action(&self) -> Result<Action, ToolError> {
        let input = ComputerUseInput {
            action: self.action.clone(),
            coordinate: self.coordinate,
            start_coordinate: self.start_coordinate,
            text: self.text.clone(),
            scroll_direction: self.scroll_direction.clone(),
            scroll_amount: self.scroll_amount,
            duration: self.duration,
            region: self.region,
        };
        input.to_action().map_err(|e| ToolError::Argument {
            field: "action",
            reason: e.to_string(),
        })
    }
}

/// What an action gave back: an image (as image content), a position, or
/// done.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DesktopActionResult {
    pub desktop_id: String,
    pub action: String,
    /// `image`, `position` or `done`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<u32>,
    /// The PNG, sent as an image content block rather than in the JSON.
    #[serde(skip)]
    #[schemars(skip)]
    png: Vec<u8>,
}

impl Render for DesktopActionResult {
    fn render(&self) -> String {
        match (self.kind.as_str(), self.width, self.height, self.x, self.y) {
            ("image", Some(w), Some(h), _, _) => format!("{}: a {w}x{h} PNG", self.action),
            ("position", _, _, Some(x), Some(y)) => format!("cursor at {x} {y}"),
            _ => format!("{}: done", self.action),
        }
    }
    fn content(&self) -> Vec<ContentBlock> {
        let text = ContentBlock::text(self.render());
        if self.png.is_empty() {
            return vec![text];
        }
        let data = base64::engine::general_purpose::STANDARD.encode(&self.png);
        vec![ContentBlock::image(data, "image/png"), text]
    }
}

/// `desktop_destroy`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DesktopDestroyArgs {
    pub desktop_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DesktopDestroyed {
    pub desktop_id: String,
}

impl Render for DesktopDestroyed {
    fn render(&self) -> String {
        format!("destroyed desktop {}", self.desktop_id)
    }
}

/// How this client's desktops take screenshots, by id.
#[derive(Debug, Default)]
pub struct DesktopScaling(Mutex<HashMap<String, [u32; 2]>>);

impl DesktopScaling {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, [u32; 2]>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Registers the desktop tools.
pub fn register(r: &mut ToolRegistry<ToolContext>) {
    r.add(
        "desktop_create",
        "Create a desktop: a sandbox (Linux microVM) running an X display with a window manager, a terminal (xterm) and a browser (firefox-esr), \
         for operating graphical programs. Returns its desktop_id and the screenshot size. Drive it with desktop_action; start programs with \
         sandbox_exec (DISPLAY is set; add `&` or they block). Destroy it with desktop_destroy when done; it is also destroyed when this client disconnects.",
        |ctx, a: DesktopCreateArgs, _| create(ctx, a),
    );
    r.add(
        "desktop_action",
        "Carry out one action on a desktop, with the computer-use tool's vocabulary: screenshot (returns a PNG image), key, type, mouse_move, \
         left_click, right_click, middle_click, double_click, triple_click, left_click_drag, left_mouse_down, left_mouse_up, scroll, hold_key, \
         wait, cursor_position (returns x, y) or zoom (a region as a PNG at full resolution). Coordinates are in screenshot pixels.",
        |ctx, a: DesktopActionArgs, _| act(ctx, a),
    );
    r.add(
        "desktop_destroy",
        "Stop a desktop this client created and delete it with everything in it.",
        |ctx, a: DesktopDestroyArgs, _| {
            ctx.sandboxes.destroy(&a.desktop_id)?;
            ctx.scaling.lock().remove(&a.desktop_id);
            Ok(DesktopDestroyed {
                desktop_id: a.desktop_id,
            })
        },
    );
}

fn create(ctx: &ToolContext, a: DesktopCreateArgs) -> Result<DesktopCreated, ToolError> {
    let size = match a.size {
        Some([w, h]) => DisplaySize::new(w, h).map_err(|e| ToolError::Argument {
            field: "size",
            reason: e.to_string(),
        })?,
        None => DisplaySize::DEFAULT,
    };
    if let Some([w, h]) = a.max_screenshot_size {
        if w == 0 || h == 0 {
            return Err(ToolError::Argument {
                field: "max_screenshot_size",
                reason: "give a width and a height of at least 1".into(),
            });
        }
    }
    let image = match a.image {
        Some(image) => image,
        None => {
            // The image builds once per machine; its progress goes to the
            // server's stderr (stdout is the protocol).
            nook_serve::desktop_image::ensure_desktop_image(
                &ctx.cfg.vm.home,
                &mut std::io::stderr(),
            )
            .map_err(|e| ToolError::Create(Box::new(e)))?
        }
    };
    let sandbox = SandboxCreateArgs {
        image: Some(image),
        memory_mib: Some(a.memory_mib.unwrap_or(DESKTOP_MEMORY_MIB)),
        cpus: a.cpus,
        ..SandboxCreateArgs::default()
    };
    let home = ctx.cfg.vm.home.clone();
    let exe = ctx.cfg.exe.clone();
    let (created, (_, desktop)) = ctx.sandboxes.create_with(&ctx.cfg, sandbox, |spec| {
        nook_serve::desktop::start_desktop(&home, spec, &exe, size)
    })?;
    let [screenshot_width, screenshot_height] = match a.max_screenshot_size {
        Some(max) => {
            ctx.scaling.lock().insert(created.sandbox_id.clone(), max);
            nook::fit_within([desktop.size.width, desktop.size.height], max)
        }
        None => [desktop.size.width, desktop.size.height],
    };
    Ok(DesktopCreated {
        desktop_id: created.sandbox_id,
        width: desktop.size.width,
        height: desktop.size.height,
        screenshot_width,
        screenshot_height,
        engine: created.engine,
        memory_mib: created.memory_mib,
    })
}

fn act(ctx: &ToolContext, a: DesktopActionArgs) -> Result<DesktopActionResult, ToolError> {
    let action = a.action()?;
    let options = DesktopOptions {
        max_size: ctx.scaling.lock().get(&a.desktop_id).copied(),
        settle: a.settle_ms.map(Duration::from_millis),
        display: None,
    };
    let failed = |e| ToolError::session("desktop_action", &a.desktop_id, e);
    let mut desktop = Desktop::open(&ctx.cfg.vm.home, &a.desktop_id, options).map_err(failed)?;
    let mut out = DesktopActionResult {
        desktop_id: a.desktop_id.clone(),
        action: a.action.clone(),
        kind: "done".into(),
        width: None,
        height: None,
        x: None,
        y: None,
        png: Vec::new(),
    };
    match desktop.act(action).map_err(failed)? {
        ActionResult::Image { png, width, height } => {
            out.kind = "image".into();
            out.width = Some(width);
            out.height = Some(height);
            out.png = png;
        }
        ActionResult::Position { x, y } => {
            out.kind = "position".into();
            out.x = Some(x);
            out.y = Some(y);
        }
        ActionResult::Done => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: serde_json::Value) -> DesktopActionArgs {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn every_field_of_the_flat_input_reaches_the_action() {
        // The mapping itself is ComputerUseInput's (tested there); here:
        // each argument is handed on, and errors name the argument.
        for input in [
            serde_json::json!({"action": "left_click_drag", "start_coordinate": [1, 2], "coordinate": [3, 4]}),
            serde_json::json!({"action": "scroll", "coordinate": [5, 6], "scroll_direction": "down", "scroll_amount": 3, "text": "shift"}),
            serde_json::json!({"action": "hold_key", "text": "ctrl", "duration": 0.5}),
            serde_json::json!({"action": "zoom", "region": [0, 0, 10, 20]}),
        ] {
            let mut with_id = input.clone();
            with_id["desktop_id"] = "d".into();
            let action = args(with_id).action().unwrap();
            assert_eq!(serde_json::to_value(action).unwrap(), input);
        }
        let e = args(serde_json::json!({"desktop_id": "d", "action": "fly"}))
            .action()
            .unwrap_err()
            .message();
        assert!(
            e.contains("invalid `action`") && e.contains("unknown action `fly`"),
            "{e}"
        );
    }

    #[test]
    fn screenshots_are_image_content_and_not_in_the_json() {
        let r = DesktopActionResult {
            desktop_id: "d".into(),
            action: "screenshot".into(),
            kind: "image".into(),
            width: Some(2),
            height: Some(1),
            x: None,
            y: None,
            png: vec![0x89, b'P', b'N', b'G'],
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"desktop_id": "d", "action": "screenshot", "kind": "image", "width": 2, "height": 1})
        );
        let content = serde_json::to_value(r.content()).unwrap();
        assert_eq!(content[0]["type"], "image");
        assert_eq!(content[0]["mimeType"], "image/png");
        assert_eq!(content[0]["data"], "iVBORw==");
        assert_eq!(content[1]["text"], "screenshot: a 2x1 PNG");
    }
}
