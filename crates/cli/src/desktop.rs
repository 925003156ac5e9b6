//! `nook desktop ...`: desktop sandboxes (sessions with a virtual display;
//! the work is in nook-serve's `desktop` module; this parses arguments and
//! prints). See docs/desktop.md.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Args, Subcommand};
use nook_serve::desktop::{self, DisplaySize};

use crate::exit::{self, report};
use crate::{desktop_act, session};

/// Guest memory of a desktop unless `--memory` says otherwise: the browser
/// wants more than a plain session's default.
pub const DESKTOP_MEMORY_MIB: &str = "1024";

#[derive(Subcommand, Debug)]
pub enum DesktopCommand {
    /// Start a desktop: a session whose guest runs an X server (Xvfb on :0) and a window manager; prints its name. exec, cp, stop and rm work on it as on any session.
    #[command(
        mut_arg("memory_mib", |a| a.default_value(DESKTOP_MEMORY_MIB)),
        mut_arg("image", |a| a.help("Image to boot (from the store, pulled when missing); default: nook's desktop image, built on first use (Debian bookworm with Xvfb, Openbox, xterm, Firefox ESR, x11vnc; see docs/desktop.md)"))
    )]
    Start(Box<DesktopStartArgs>),
    /// Serve a desktop's display over VNC on a loopback port until interrupted: prints vnc://127.0.0.1:PORT and a password made for this view (once).
    View(ViewArgs),
    /// Take a screenshot of a desktop's display: a PNG (-o FILE), optionally scaled down (--max-size WxH).
    Screenshot(desktop_act::ScreenshotArgs),
    /// Carry out one action on a desktop (the computer-use vocabulary: left_click X Y, type TEXT, key ctrl+l, scroll down 3, ...).
    Do(desktop_act::DoArgs),
}

#[derive(Args, Debug)]
pub struct DesktopStartArgs {
    /// Size of the display in pixels.
    #[arg(long, default_value_t = DisplaySize::DEFAULT, value_parser = parse_size, value_name = "WxH")]
    pub size: DisplaySize,
    /// The session's options, as `nook start` (with more memory by default).
    #[command(flatten)]
    pub session: session::StartArgs,
}

#[derive(Args, Debug)]
pub struct ViewArgs {
    /// Host port to listen on (on 127.0.0.1); 0 picks a free one.
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    pub port: u16,
    /// The desktop session.
    #[arg(value_name = "NAME")]
    pub name: String,
}

fn parse_size(s: &str) -> Result<DisplaySize, String> {
    s.parse()
        .map_err(|e: desktop::DisplaySizeError| e.to_string())
}

pub fn desktop(cmd: DesktopCommand) -> i32 {
    match cmd {
        DesktopCommand::Start(args) => start(args),
        DesktopCommand::View(args) => view(args),
        DesktopCommand::Screenshot(args) => desktop_act::screenshot(args),
        DesktopCommand::Do(args) => desktop_act::act(args),
    }
}

fn start(args: Box<DesktopStartArgs>) -> i32 {
    let home = nook::default_home();
    let image = match &args.session.image {
        Some(reference) => reference.clone(),
        None => {
            match nook_serve::desktop_image::ensure_desktop_image(&home, &mut std::io::stderr()) {
                Ok(reference) => reference,
                Err(e) => {
                    report(&e);
                    return exit::NOOK_FAILED;
                }
            }
        }
    };
    let spec = match session::session_spec(&args.session, Some(image)) {
        Ok(spec) => spec,
        Err(code) => return code,
    };
    let exe = match session::current_exe() {
        Ok(exe) => exe,
        Err(code) => return code,
    };
    match desktop::start_desktop(&home, &spec, &exe, args.size) {
        Ok(_) => {
            println!("{}", spec.name);
            0
        }
        failed => exit::code(failed),
    }
}

fn view(args: ViewArgs) -> i32 {
    let home = nook::default_home();
    let view = match desktop::view::VncView::open(&home, &args.name, args.port) {
        Ok(v) => v,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            report(&e);
            return exit::NOOK_FAILED;
        }
    }
    let mut out = std::io::stdout();
    // The password is shown here once; it is not stored on the host.
    let _ = writeln!(out, "{}", view.url());
    let _ = writeln!(out, "password: {}", view.password());
    let _ = out.flush();
    eprintln!(
        "nook: serving the display of {} over VNC until interrupted (Ctrl-C)",
        args.name
    );
    exit::code(view.serve(&|| stop.load(Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_parsed_with_a_usable_message() {
        assert_eq!(parse_size("800x600").unwrap().to_string(), "800x600");
        assert!(parse_size("big").unwrap_err().contains("WIDTHxHEIGHT"));
    }
}
