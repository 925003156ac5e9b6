//! `nook desktop screenshot` and `nook desktop do`: actions on a desktop
//! session (the work is in nook-serve's `desktop::Desktop`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use nook_serve::desktop::{action_from_words, ActionResult, Desktop, DesktopOptions};

use crate::exit::{self, report};

/// How screenshots are taken and coordinates read.
#[derive(Args, Debug)]
pub struct ShotOptions {
    /// Scale screenshots down to fit within WxH (aspect kept); coordinates of actions are then in the scaled image's pixels and scaled back to the screen.
    #[arg(long, value_name = "WxH", value_parser = parse_max_size)]
    pub max_size: Option<[u32; 2]>,
    /// After the action, wait up to MS milliseconds until the screen stops changing before answering.
    #[arg(long, value_name = "MS")]
    pub settle_ms: Option<u64>,
}

impl ShotOptions {
    fn options(&self) -> DesktopOptions {
        DesktopOptions {
            max_size: self.max_size,
            settle: self.settle_ms.map(Duration::from_millis),
            display: None,
        }
    }
}

#[derive(Args, Debug)]
pub struct ScreenshotArgs {
    /// The desktop session.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Write the PNG to FILE (`-`: standard output).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub shot: ShotOptions,
}

#[derive(Args, Debug)]
#[command(after_help = crate::desktop_act::DO_HELP)]
pub struct DoArgs {
    /// The desktop session.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The action (see below), or one JSON object such as '{"action":"left_click","coordinate":[100,200]}'.
    #[arg(value_name = "ACTION")]
    pub action: String,
    /// The action's arguments.
    #[arg(value_name = "ARGS", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Keys held down during a click or scroll (`shift`, `ctrl+alt`).
    #[arg(long, value_name = "KEYS")]
    pub hold: Option<String>,
    /// Write an image result (screenshot, zoom) to FILE (`-`: standard output).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print the result as JSON: {"kind":"done"}, {"kind":"position","x":..,"y":..}, or {"kind":"image","width":..,"height":..,"png":BASE64}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub shot: ShotOptions,
}

/// The `do` help's list of actions.
pub const DO_HELP: &str = "Actions (coordinates in screenshot pixels, X,Y also accepted):
  screenshot                      a PNG of the screen (-o FILE)
  key KEYS                        xdotool names and chords: Return, ctrl+l, alt+F4, 'ctrl+a Delete'
  type TEXT                       any UTF-8 text
  mouse_move X Y
  left_click [X Y]                also right_click, middle_click, double_click, triple_click (--hold KEYS)
  left_click_drag X1 Y1 X2 Y2
  left_mouse_down [X Y]           also left_mouse_up
  scroll up|down|left|right N [X Y]
  hold_key KEYS SECONDS
  wait SECONDS
  cursor_position                 prints X Y
  zoom X0 Y0 X1 Y1                a PNG of that region at full resolution (-o FILE)";

fn parse_max_size(s: &str) -> Result<[u32; 2], String> {
    let bad = || format!("invalid size `{s}`: give WIDTHxHEIGHT in pixels, such as 1024x768");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h) = (
        w.parse::<u32>().map_err(|_| bad())?,
        h.parse::<u32>().map_err(|_| bad())?,
    );
    if w == 0 || h == 0 {
        return Err(bad());
    }
    Ok([w, h])
}

fn open(name: &str, shot: &ShotOptions) -> Result<Desktop, i32> {
    Desktop::open(&nook::default_home(), name, shot.options()).map_err(|e| {
        report(&e);
        exit::NOOK_FAILED
    })
}

fn write_png(path: &PathBuf, png: &[u8]) -> Result<(), i32> {
    let written = if path.as_os_str() == "-" {
        std::io::stdout().lock().write_all(png)
    } else {
        std::fs::write(path, png)
    };
    written.map_err(|e| {
        eprintln!("nook: cannot write {}: {e}", path.display());
        exit::NOOK_FAILED
    })
}

pub fn screenshot(args: ScreenshotArgs) -> i32 {
    let mut desktop = match open(&args.name, &args.shot) {
        Ok(d) => d,
        Err(code) => return code,
    };
    match desktop.screenshot() {
        Ok((png, _, _)) => write_png(&args.output, &png).err().unwrap_or(0),
        Err(e) => {
            report(&e);
            exit::NOOK_FAILED
        }
    }
}

pub fn act(args: DoArgs) -> i32 {
    let action = match action_from_words(&args.action, &args.args, args.hold.as_deref()) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("nook: {msg}");
            return exit::USAGE;
        }
    };
    let is_image = matches!(
        action,
        nook::DesktopAction::Screenshot | nook::DesktopAction::Zoom { .. }
    );
    if is_image && args.output.is_none() && !args.json {
        eprintln!(
            "nook: {} gives an image: write it with -o FILE (or print it with --json)",
            action.name()
        );
        return exit::USAGE;
    }
    let mut desktop = match open(&args.name, &args.shot) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let result = match desktop.act(action) {
        Ok(r) => r,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    if let (ActionResult::Image { png, .. }, Some(path)) = (&result, &args.output) {
        if let Err(code) = write_png(path, png) {
            return code;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&result).unwrap_or_default());
    } else if let ActionResult::Position { x, y } = result {
        println!("{x} {y}");
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_sizes_parse() {
        assert_eq!(parse_max_size("1024x768").unwrap(), [1024, 768]);
        assert!(parse_max_size("1024").is_err());
        assert!(parse_max_size("0x5").is_err());
    }
}
