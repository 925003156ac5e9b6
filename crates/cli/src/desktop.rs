//! `nook desktop ...`: desktop sandboxes (sessions with a virtual display;
//! the work is in nook-serve's `desktop` module; this parses arguments and
//! prints). See docs/desktop.md.

use clap::Subcommand;

use crate::desktop_act;

#[derive(Subcommand, Debug)]
pub enum DesktopCommand {
    /// Take a screenshot of a desktop's display: a PNG (-o FILE), optionally scaled down (--max-size WxH).
    Screenshot(desktop_act::ScreenshotArgs),
    /// Carry out one action on a desktop (the computer-use vocabulary: left_click X Y, type TEXT, key ctrl+l, scroll down 3, ...).
    Do(desktop_act::DoArgs),
}

pub fn desktop(cmd: DesktopCommand, _matches: Option<&clap::ArgMatches>) -> i32 {
    match cmd {
        DesktopCommand::Screenshot(args) => desktop_act::screenshot(args),
        DesktopCommand::Do(args) => desktop_act::act(args),
    }
}
