//! Desktop requests of the daemon protocol: `desktop_create` (a session
//! with an X display, [`crate::desktop::start_desktop`]) and
//! `desktop_action` (one action of the computer-use vocabulary through a
//! [`Desktop`]). The daemon keeps one [`Desktop`] per desktop session, so
//! the screenshot scaling a client chose holds for its later actions, as
//! it does for a library [`Desktop`] and the MCP tools; it is dropped when
//! the session ends through the daemon.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::conn::{create_session_with, lock, spawn, Out, Owned};
use super::proto::{
    DesktopActionRequest, DesktopCreateSpec, ErrorCode, ReplyBody, RequestId, MAX_LINE,
};
use super::server::Daemon;
use crate::desktop::{
    desktop_state, start_desktop, ActionResult, Desktop, DesktopOptions, DesktopState, DisplaySize,
    DESKTOP_MEMORY_MIB,
};
use crate::error::SessionError;
use crate::wire::encode_bytes;

/// The largest PNG an `image` reply carries: its base64 and the rest of
/// the reply stay under [`MAX_LINE`].
const MAX_REPLY_PNG: usize = MAX_LINE / 4 * 3 - 4096;

/// A desktop session's [`Desktop`], with the display it was opened for.
#[derive(Debug)]
struct Entry {
    state: DesktopState,
    desktop: Arc<Mutex<Desktop>>,
}

/// The [`Desktop`]s of sessions desktop requests reached, by session.
#[derive(Debug, Default)]
pub(crate) struct Desktops(Mutex<HashMap<String, Entry>>);

impl Desktops {
    /// Drops session `name`'s desktop (the session ended).
    pub(crate) fn forget(&self, name: &str) {
        lock(&self.0).remove(name);
    }

    fn insert(&self, name: &str, state: DesktopState, desktop: Desktop) {
        let desktop = Arc::new(Mutex::new(desktop));
        lock(&self.0).insert(name.to_string(), Entry { state, desktop });
    }

    /// Session `name`'s desktop: the one kept for it, or a new one when
    /// none is kept or the session's display is not the one it was for
    /// (a session of the same name made since, or a desktop started
    /// elsewhere, `nook desktop start`). A session without a display is
    /// refused ([`SessionError::NotADesktop`]).
    fn get(&self, d: &Daemon, name: &str) -> Result<Arc<Mutex<Desktop>>, SessionError> {
        let state = desktop_state(&d.cfg.home, name)?;
        let mut map = lock(&self.0);
        if let Some(entry) = map.get(name).filter(|e| e.state == state) {
            return Ok(entry.desktop.clone());
        }
        let desktop = Arc::new(Mutex::new(Desktop::open(
            &d.cfg.home,
            name,
            DesktopOptions::default(),
        )?));
        let entry = Entry {
            state,
            desktop: desktop.clone(),
        };
        map.insert(name.to_string(), entry);
        Ok(desktop)
    }
}

/// A `[width, height]` of at least one pixel a side, or the error to send.
fn checked_max(max: Option<[u32; 2]>) -> Result<Option<[u32; 2]>, String> {
    match max {
        Some([w, h]) if w == 0 || h == 0 => Err(format!(
            "`max_screenshot_size` [{w}, {h}]: give a width and a height of at least 1"
        )),
        other => Ok(other),
    }
}

/// `desktop_create`: boots the session and its display on a thread of
/// its own, then answers `desktop`.
pub(crate) fn create(
    d: &Arc<Daemon>,
    out: &Out,
    owned: &Arc<Owned>,
    id: RequestId,
    c: DesktopCreateSpec,
) {
    let size = match c.size {
        Some([w, h]) => match DisplaySize::new(w, h) {
            Ok(size) => size,
            Err(e) => return out.error(&id, ErrorCode::BadRequest, format!("`size`: {e}")),
        },
        None => DisplaySize::DEFAULT,
    };
    let max = match checked_max(c.max_screenshot_size) {
        Ok(max) => max,
        Err(message) => return out.error(&id, ErrorCode::BadRequest, message),
    };
    if c.spec.snapshot.is_some() {
        return out.error(
            &id,
            ErrorCode::BadRequest,
            "a desktop boots and starts its display: leave out `snapshot` (restore snapshots with session_create)",
        );
    }
    let (d, out, owned) = (d.clone(), out.clone(), owned.clone());
    spawn(move || {
        let mut spec = c.spec;
        spec.memory_mib = Some(spec.memory_mib.unwrap_or(DESKTOP_MEMORY_MIB));
        if spec.image.is_none() {
            // Built once per machine; its progress goes to the daemon's stderr.
            match crate::desktop_image::ensure_desktop_image(&d.cfg.home, &mut std::io::stderr()) {
                Ok(image) => spec.image = Some(image),
                Err(e) => return out.session_error(&id, &e),
            }
        }
        let started = create_session_with(&d, &spec, None, |home, session, exe| {
            start_desktop(home, session, exe, size)
        });
        let (session, state) = match started {
            Ok(started) => started,
            Err(e) => return out.session_error(&id, &e),
        };
        if !spec.keep {
            lock(&owned.sessions).push(session.name.clone());
        }
        let options = DesktopOptions {
            max_size: max,
            ..DesktopOptions::default()
        };
        let screen = [state.size.width, state.size.height];
        match Desktop::open(&d.cfg.home, &session.name, options) {
            Ok(desktop) => d.desktops.insert(&session.name, state, desktop),
            Err(e) => return out.session_error(&id, &e),
        }
        let [screenshot_width, screenshot_height] = match max {
            Some(max) => nook::fit_within(screen, max),
            None => screen,
        };
        out.send(
            &id,
            ReplyBody::Desktop {
                session,
                width: screen[0],
                height: screen[1],
                screenshot_width,
                screenshot_height,
            },
        );
    });
}

/// `desktop_action`: carries the action out on a thread of its own (a
/// screenshot, a `wait` or a settle takes a while) and answers `image`,
/// `position` or `done`.
pub(crate) fn act(d: &Arc<Daemon>, out: &Out, id: RequestId, req: DesktopActionRequest) {
    let action = match req.input.to_action() {
        Ok(action) => action,
        Err(e) => return out.error(&id, ErrorCode::BadRequest, e.to_string()),
    };
    let max = match checked_max(req.max_screenshot_size) {
        Ok(max) => max,
        Err(message) => return out.error(&id, ErrorCode::BadRequest, message),
    };
    let (d, out) = (d.clone(), out.clone());
    spawn(move || {
        let result = d.desktops.get(&d, &req.session).and_then(|desktop| {
            let mut desktop = lock(&desktop);
            let options = desktop.options_mut();
            if max.is_some() {
                options.max_size = max;
            }
            options.settle = req.settle_ms.map(Duration::from_millis);
            desktop.act(action)
        });
        let body = match result {
            Ok(ActionResult::Image { png, .. }) if png.len() > MAX_REPLY_PNG => {
                return out.error(
                    &id,
                    ErrorCode::BadRequest,
                    format!(
                        "the image is {} bytes, over the {MAX_REPLY_PNG} a reply carries: send a smaller `max_screenshot_size` (or zoom into a region)",
                        png.len()
                    ),
                );
            }
            Ok(ActionResult::Image { png, width, height }) => ReplyBody::Image {
                data: encode_bytes(&png),
                width,
                height,
            },
            Ok(ActionResult::Position { x, y }) => ReplyBody::Position { x, y },
            Ok(ActionResult::Done) => ReplyBody::Done,
            Err(e) => return out.session_error(&id, &e),
        };
        out.send(&id, body);
    });
}
