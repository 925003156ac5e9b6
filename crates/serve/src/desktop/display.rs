//! The display of a desktop session: Xvfb on display `:0` (X socket
//! `/tmp/.X11-unix/X0`, local connections only, no cookie needed, XTEST
//! on, 24-bit colour, no reset when its last client leaves) and a window
//! manager, both detached guest processes of a normal session that do not
//! keep it from idling out. Every command in the session gets
//! `DISPLAY=:0`.
//! What was started is recorded in the session directory:
//!
//! ```text
//! $NOOK_HOME/sessions/NAME/desktop.json   DesktopState (written by start_desktop)
//! ```

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::SessionClient;
use crate::error::SessionError;
use crate::state::{write_json, SessionDir, SessionSpec, SessionState};
use crate::wire::ExecSpec;

/// The X display the desktop serves.
pub const DISPLAY: &str = ":0";
/// Its socket in the guest.
pub const X_SOCKET: &str = "/tmp/.X11-unix/X0";
/// The window manager started with the display.
pub const WINDOW_MANAGER: &str = "openbox";
/// How long the X server may take to accept connections.
const DISPLAY_WAIT: Duration = Duration::from_secs(60);
/// How often the readiness check runs while it waits.
const DISPLAY_POLL: Duration = Duration::from_millis(100);
/// How long the window manager may take to take the screen.
const WINDOW_MANAGER_WAIT: Duration = Duration::from_secs(60);
/// The guest file the window manager creates once it manages the screen
/// (Openbox's `--startup` command runs after it has taken the screen).
const WINDOW_MANAGER_READY: &str = "/run/nook-desktop-wm.ready";
/// The file in the session directory that marks a desktop.
const DESKTOP_FILE: &str = "desktop.json";

/// The size of a display in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplaySize {
    pub width: u32,
    pub height: u32,
}

/// A display size that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisplaySizeError {
    #[error("invalid display size `{0}`: give WIDTHxHEIGHT in pixels, such as 1280x800")]
    Syntax(String),
    #[error("display size {width}x{height} is out of range: each side must be {min} to {max} pixels", min = DisplaySize::MIN_SIDE, max = DisplaySize::MAX_SIDE)]
    Range { width: u32, height: u32 },
}

impl DisplaySize {
    /// The size a desktop gets unless the caller chooses one.
    pub const DEFAULT: DisplaySize = DisplaySize {
        width: 1280,
        height: 800,
    };
    /// The smallest side accepted, in pixels.
    pub const MIN_SIDE: u32 = 64;
    /// The largest side accepted, in pixels (a 24-bit frame of 8192x8192
    /// is 256 MiB of guest memory).
    pub const MAX_SIDE: u32 = 8192;

    /// A checked size.
    pub fn new(width: u32, height: u32) -> Result<DisplaySize, DisplaySizeError> {
        let side = Self::MIN_SIDE..=Self::MAX_SIDE;
        if side.contains(&width) && side.contains(&height) {
            Ok(DisplaySize { width, height })
        } else {
            Err(DisplaySizeError::Range { width, height })
        }
    }
}

impl Default for DisplaySize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FromStr for DisplaySize {
    type Err = DisplaySizeError;
    /// `1280x800` (or `1280X800`).
    fn from_str(s: &str) -> Result<DisplaySize, DisplaySizeError> {
        let syntax = || DisplaySizeError::Syntax(s.to_string());
        let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(syntax)?;
        let side = |v: &str| {
            v.parse::<u32>()
                .ok()
                .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
        };
        match (side(w), side(h)) {
            (Some(w), Some(h)) => DisplaySize::new(w, h),
            _ => Err(syntax()),
        }
    }
}

impl std::fmt::Display for DisplaySize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// What [`start_display`] started, as recorded in the session directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesktopState {
    /// The X display (`:0`).
    pub display: String,
    pub size: DisplaySize,
    /// The X server's guest pid.
    pub xvfb_pid: u32,
    /// The window manager's guest pid.
    pub window_manager_pid: u32,
}

/// The desktop state of session `name`; [`SessionError::NotADesktop`] when
/// it is a session without a display.
pub fn desktop_state(home: &Path, name: &str) -> Result<DesktopState, SessionError> {
    let sd = SessionDir::new(home, name)?;
    if !sd.0.exists() {
        return Err(SessionError::NoSuchSession(name.to_string()));
    }
    let path = sd.0.join(DESKTOP_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| SessionError::Corrupt { path, source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(SessionError::NotADesktop(name.to_string()))
        }
        Err(e) => Err(SessionError::io("read", &path, e)),
    }
}

/// Starts session `spec` (booting `spec.image`, which should have Xvfb
/// and the window manager: see [`crate::desktop_image`]) with `DISPLAY=:0`
/// in its environment, then its display of `size`; returns once the X
/// server accepts connections and the window manager manages the screen.
/// A display that does not start takes the session down with it.
pub fn start_desktop(
    home: &Path,
    spec: &SessionSpec,
    exe: &Path,
    size: DisplaySize,
) -> Result<(SessionState, DesktopState), SessionError> {
    let mut spec = spec.clone();
    spec.env.retain(|(k, _)| k != "DISPLAY");
    spec.env.push(("DISPLAY".into(), DISPLAY.into()));
    let state = crate::client::start(home, &spec, exe)?;
    let desktop = SessionClient::open(home, &spec.name)
        .and_then(|client| start_display(home, &client, &spec.name, size));
    match desktop {
        Ok(desktop) => Ok((state, desktop)),
        Err(e) => {
            let _ = crate::client::remove(home, &spec.name, true);
            Err(e)
        }
    }
}

/// Starts the display in running session `name` (reached by `client`):
/// Xvfb, a wait until it accepts connections, then the window manager and
/// a wait until it has taken the screen; records them in the session
/// directory.
pub fn start_display(
    home: &Path,
    client: &SessionClient,
    name: &str,
    size: DisplaySize,
) -> Result<DesktopState, SessionError> {
    let sd = SessionDir::new(home, name)?;
    let failed = |reason: String| SessionError::DisplayFailed {
        name: name.to_string(),
        reason,
    };
    let geometry = format!("{size}x24");
    let xvfb = detached(
        client,
        &[
            "Xvfb",
            DISPLAY,
            "-screen",
            "0",
            &geometry,
            "-nolisten",
            "tcp",
            "+extension",
            "XTEST",
            // Without it the server resets (drops every window property,
            // the root's background, ...) whenever its last client leaves.
            "-noreset",
        ],
    )?;
    let waited = |reason| match reason {
        Waited::Session(e) => e,
        Waited::Failed(reason) => failed(reason),
    };
    wait_for_display(client, xvfb).map_err(waited)?;
    match client.remove(WINDOW_MANAGER_READY, false) {
        Ok(()) | Err(SessionError::Refused { .. }) => {}
        Err(e) => return Err(e),
    }
    let ready_cmd = format!("touch {WINDOW_MANAGER_READY}");
    let window_manager = detached(client, &[WINDOW_MANAGER, "--startup", &ready_cmd])?;
    wait_for_window_manager(client, window_manager).map_err(waited)?;
    let state = DesktopState {
        display: DISPLAY.to_string(),
        size,
        xvfb_pid: xvfb,
        window_manager_pid: window_manager,
    };
    write_json(&sd.0.join(DESKTOP_FILE), &state)?;
    Ok(state)
}

/// Starts `argv` in the background with `DISPLAY=:0`, as a service of the
/// session (it does not keep the session from idling out); its guest pid.
fn detached(client: &SessionClient, argv: &[&str]) -> Result<u32, SessionError> {
    let exec = client.exec(ExecSpec {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        env: vec![("DISPLAY".into(), DISPLAY.into())],
        detach: true,
        service: true,
        ..ExecSpec::default()
    })?;
    Ok(exec.pid)
}

/// Why the display is not there.
enum Waited {
    /// The session failed.
    Session(SessionError),
    /// The X server ended or never answered.
    Failed(String),
}

/// Waits until the X server `xvfb` answers a client (`xset q`).
fn wait_for_display(client: &SessionClient, xvfb: u32) -> Result<(), Waited> {
    let probe = || {
        let out = client.output(ExecSpec {
            argv: ["xset", "-display", DISPLAY, "q"]
                .map(String::from)
                .to_vec(),
            timeout_ms: Some(10_000),
            ..ExecSpec::default()
        })?;
        Ok(out.success())
    };
    wait_for(
        client,
        ("Xvfb", xvfb),
        "accept connections",
        DISPLAY_WAIT,
        probe,
    )
}

/// Waits until the window manager `pid` has taken the screen (its startup
/// command made [`WINDOW_MANAGER_READY`]).
fn wait_for_window_manager(client: &SessionClient, pid: u32) -> Result<(), Waited> {
    let probe = || match client.stat(WINDOW_MANAGER_READY) {
        Ok(_) => Ok(true),
        Err(SessionError::Refused { .. }) => Ok(false),
        Err(e) => Err(e),
    };
    let what = (WINDOW_MANAGER, pid);
    wait_for(client, what, "take the screen", WINDOW_MANAGER_WAIT, probe)
}

/// Polls `ready` until it says yes, at most `limit`; fails with the
/// output of background process `program` (name, pid) when it exits or
/// the time is up.
fn wait_for(
    client: &SessionClient,
    (program, pid): (&str, u32),
    doing: &str,
    limit: Duration,
    mut ready: impl FnMut() -> Result<bool, SessionError>,
) -> Result<(), Waited> {
    let deadline = Instant::now() + limit;
    loop {
        if ready().map_err(Waited::Session)? {
            return Ok(());
        }
        let log = client
            .proc_read(pid, 0, Some(4096))
            .map_err(Waited::Session)?;
        let text = || String::from_utf8_lossy(&log.data).trim().to_string();
        if let Some(exit) = log.exit {
            return Err(Waited::Failed(format!(
                "{program} exited ({exit:?}): {}",
                text()
            )));
        }
        if Instant::now() >= deadline {
            return Err(Waited::Failed(format!(
                "{program} did not {doing} in {} s: {}",
                limit.as_secs(),
                text()
            )));
        }
        std::thread::sleep(DISPLAY_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_are_checked() {
        assert_eq!(
            "1280x800".parse::<DisplaySize>().unwrap(),
            DisplaySize::DEFAULT
        );
        assert_eq!(
            "640X480".parse::<DisplaySize>().unwrap(),
            DisplaySize {
                width: 640,
                height: 480
            }
        );
        assert_eq!(DisplaySize::DEFAULT.to_string(), "1280x800");
        for bad in [
            "",
            "1280",
            "x800",
            "1280x",
            "12a0x800",
            "+1280x800",
            "1280x800x24",
        ] {
            assert!(
                matches!(bad.parse::<DisplaySize>(), Err(DisplaySizeError::Syntax(_))),
                "{bad}"
            );
        }
        for out in ["63x800", "1280x63", "8193x800", "99999999999x1"] {
            assert!(out.parse::<DisplaySize>().is_err(), "{out}");
        }
        assert!(matches!(
            "32x32".parse::<DisplaySize>(),
            Err(DisplaySizeError::Range { .. })
        ));
    }

    #[test]
    fn a_session_without_a_desktop_file_is_not_a_desktop() {
        let home = tempfile::tempdir().unwrap();
        let sd = SessionDir::new(home.path(), "plain").unwrap();
        std::fs::create_dir_all(&sd.0).unwrap();
        assert!(matches!(
            desktop_state(home.path(), "plain"),
            Err(SessionError::NotADesktop(n)) if n == "plain"
        ));
        assert!(matches!(
            desktop_state(home.path(), "absent"),
            Err(SessionError::NoSuchSession(_))
        ));
        let state = DesktopState {
            display: DISPLAY.into(),
            size: DisplaySize::DEFAULT,
            xvfb_pid: 7,
            window_manager_pid: 9,
        };
        std::fs::write(sd.0.join(DESKTOP_FILE), serde_json::to_vec(&state).unwrap()).unwrap();
        assert_eq!(desktop_state(home.path(), "plain").unwrap(), state);
    }
}
