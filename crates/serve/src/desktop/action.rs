//! Desktop actions through a session: the library API ([`Desktop`]), the
//! client's request and the session host's side of it.
//!
//! Screenshots may be scaled down to a maximum size; the coordinates of
//! later actions are then in the scaled image's pixels and are scaled back
//! to the screen here, as the reference computer-use tools do, so an agent
//! only ever sees one coordinate space.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nook::{
    fit_within, scale_edge, scale_point, Coordinate, DesktopError, DesktopErrorKind, DesktopReply,
    DesktopRequest, DesktopResult,
};
use serde::{Deserialize, Serialize};

use crate::client::{next_reply, SessionClient};
use crate::error::SessionError;
use crate::host::{send, Host};
use crate::wire::{decode_bytes, encode_bytes, SessionErrorCode, SessionReply, SessionRequest};

/// One desktop action: the computer-use vocabulary (`screenshot`, `key`,
/// `type`, `mouse_move`, `left_click`, ... `zoom`), as JSON
/// `{"action": "left_click", "coordinate": [x, y]}`.
pub use nook::DesktopAction as Action;

/// PNG bytes a `data` line carries at most (base64 keeps the line under
/// [`crate::wire::MAX_LINE`]).
const IMAGE_LINE_BYTES: usize = 512 * 1024;

/// How a [`Desktop`] takes screenshots and answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesktopOptions {
    /// Scale screenshots down to fit within `[width, height]` (aspect
    /// kept); coordinates of actions are then in the scaled pixels.
    pub max_size: Option<[u32; 2]>,
    /// After each action, wait up to this long until the screen stops
    /// changing before answering.
    pub settle: Option<Duration>,
    /// The X display in the guest (`:0` when absent).
    pub display: Option<String>,
}

/// What an action gave back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActionResult {
    /// A PNG (`screenshot`, `zoom`) of `width` x `height` pixels; base64
    /// in JSON.
    Image {
        #[serde(with = "base64_bytes")]
        png: Vec<u8>,
        width: u32,
        height: u32,
    },
    /// The pointer (`cursor_position`), in the coordinates actions use.
    Position { x: u32, y: u32 },
    /// The action was carried out.
    Done,
}

mod base64_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::wire::encode_bytes(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        crate::wire::decode_bytes(&text).map_err(serde::de::Error::custom)
    }
}

/// A desktop session driven with [`Action`]s; keeps the screen size to
/// scale coordinates between screenshots and the screen.
#[derive(Debug)]
pub struct Desktop {
    client: SessionClient,
    options: DesktopOptions,
    /// The screen size the guest last reported.
    screen: Option<[u32; 2]>,
}

fn refused(message: String) -> SessionError {
    SessionError::Refused {
        code: SessionErrorCode::BadRequest,
        message,
    }
}

impl Desktop {
    pub fn new(client: SessionClient, options: DesktopOptions) -> Desktop {
        Desktop {
            client,
            options,
            screen: None,
        }
    }

    /// The desktop of running session `name`.
    pub fn open(home: &Path, name: &str, options: DesktopOptions) -> Result<Desktop, SessionError> {
        Ok(Desktop::new(SessionClient::open(home, name)?, options))
    }

    pub fn options(&self) -> &DesktopOptions {
        &self.options
    }

    /// Changes how later actions take screenshots and answer (the screen
    /// size the desktop knows stays).
    pub fn options_mut(&mut self) -> &mut DesktopOptions {
        &mut self.options
    }

    /// The screen's size in pixels.
    pub fn screen_size(&mut self) -> Result<[u32; 2], SessionError> {
        match self.screen {
            Some(s) => Ok(s),
            None => {
                let req = self.request(Action::CursorPosition);
                let (reply, _) = self.client.desktop(&req)?;
                self.screen = Some(reply.screen);
                Ok(reply.screen)
            }
        }
    }

    /// The size screenshots come in, and so the space of coordinates.
    pub fn image_size(&mut self) -> Result<[u32; 2], SessionError> {
        let screen = self.screen_size()?;
        Ok(match self.options.max_size {
            Some(max) => fit_within(screen, max),
            None => screen,
        })
    }

    /// A screenshot: its PNG and size.
    pub fn screenshot(&mut self) -> Result<(Vec<u8>, u32, u32), SessionError> {
        match self.act(Action::Screenshot)? {
            ActionResult::Image { png, width, height } => Ok((png, width, height)),
            other => Err(SessionError::Protocol(format!(
                "expected an image, got {other:?}"
            ))),
        }
    }

    /// Carries out `action`, its coordinates in screenshot pixels.
    pub fn act(&mut self, action: Action) -> Result<ActionResult, SessionError> {
        let action = self.screen_action(action)?;
        let req = self.request(action);
        let (reply, png) = self.client.desktop(&req)?;
        self.screen = Some(reply.screen);
        Ok(match reply.result {
            DesktopResult::Image { width, height, .. } => {
                ActionResult::Image { png, width, height }
            }
            DesktopResult::Position { x, y } => {
                let [x, y] = self.shot_point([x, y], reply.screen);
                ActionResult::Position { x, y }
            }
            DesktopResult::Done => ActionResult::Done,
        })
    }

    fn request(&self, action: Action) -> DesktopRequest {
        DesktopRequest {
            action,
            display: self.options.display.clone(),
            max_image_size: self.options.max_size,
            settle_ms: self.options.settle.map(|d| d.as_millis() as u64),
        }
    }

    /// `action` with its coordinates scaled from screenshot to screen
    /// pixels (unchanged without a maximum size); a coordinate outside the
    /// screenshot is refused.
    fn screen_action(&mut self, action: Action) -> Result<Action, SessionError> {
        let Some(max) = self.options.max_size else {
            return Ok(action);
        };
        let screen = self.screen_size()?;
        let shot = fit_within(screen, max);
        if shot == screen {
            return Ok(action);
        }
        let off = std::cell::Cell::new(None);
        let action = action.map_points(|p: Coordinate| {
            if p[0] >= shot[0] || p[1] >= shot[1] {
                off.set(Some(p));
            }
            scale_point(p, shot, screen)
        });
        if let Some(p) = off.get() {
            return Err(refused(format!(
                "coordinate [{}, {}] is off the {}x{} screenshot",
                p[0], p[1], shot[0], shot[1]
            )));
        }
        Ok(match action {
            Action::Zoom {
                region: [x0, y0, x1, y1],
            } => Action::Zoom {
                region: [
                    scale_edge(x0, shot[0], screen[0]),
                    scale_edge(y0, shot[1], screen[1]),
                    scale_edge(x1, shot[0], screen[0]),
                    scale_edge(y1, shot[1], screen[1]),
                ],
            },
            other => other,
        })
    }

    /// A screen point in screenshot pixels.
    fn shot_point(&self, p: Coordinate, screen: [u32; 2]) -> Coordinate {
        match self.options.max_size {
            Some(max) => scale_point(p, screen, fit_within(screen, max)),
            None => p,
        }
    }
}

impl SessionClient {
    /// Sends one desktop request (coordinates in screen pixels): the
    /// reply and, for an image, its PNG.
    pub fn desktop(&self, req: &DesktopRequest) -> Result<(DesktopReply, Vec<u8>), SessionError> {
        let (_w, mut r) = self.request(&SessionRequest::Desktop(req.clone()))?;
        read_desktop_reply(&mut r)
    }
}

fn read_desktop_reply(
    r: &mut BufReader<UnixStream>,
) -> Result<(DesktopReply, Vec<u8>), SessionError> {
    let mut png = Vec::new();
    loop {
        match next_reply(r)? {
            Some(SessionReply::Data { data }) => {
                let bytes =
                    decode_bytes(&data).map_err(|e| SessionError::Protocol(e.to_string()))?;
                if png.len() + bytes.len() > nook::MAX_DESKTOP_IMAGE {
                    return Err(SessionError::Protocol(
                        "the desktop image is too large".into(),
                    ));
                }
                png.extend_from_slice(&bytes);
            }
            Some(SessionReply::Desktop(reply)) => return Ok((reply, png)),
            Some(SessionReply::Error { code, message }) => {
                return Err(SessionError::Refused { code, message })
            }
            other => {
                return Err(SessionError::Protocol(format!(
                    "expected a desktop reply, got {other:?}"
                )))
            }
        }
    }
}

/// The session host's side: carries out `req` on the session's VM and
/// answers with the PNG's `data` lines and the `desktop` line.
pub(crate) fn serve_desktop(
    host: &Host,
    req: &DesktopRequest,
    w: &mut impl Write,
) -> std::io::Result<()> {
    let desktop = host
        .vm
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|vm| vm.desktop());
    let Some(desktop) = desktop else {
        return send(
            w,
            &error(SessionErrorCode::Vm, "the session is stopping".into()),
        );
    };
    host.busy.fetch_add(1, Ordering::Relaxed);
    let result = desktop.request(req);
    host.busy.fetch_sub(1, Ordering::Relaxed);
    host.touch();
    match result {
        Ok((reply, png)) => {
            for chunk in png.chunks(IMAGE_LINE_BYTES) {
                send(
                    w,
                    &SessionReply::Data {
                        data: encode_bytes(chunk),
                    },
                )?;
            }
            send(w, &SessionReply::Desktop(reply))
        }
        Err(e) => {
            let code = match &e {
                DesktopError::Guest { kind, .. } => match kind {
                    DesktopErrorKind::BadRequest => SessionErrorCode::BadRequest,
                    DesktopErrorKind::NoDisplay => SessionErrorCode::NoDisplay,
                    DesktopErrorKind::Failed => SessionErrorCode::DesktopFailed,
                },
                DesktopError::Unsupported | DesktopError::ImageTooLarge { .. } => {
                    SessionErrorCode::DesktopFailed
                }
                DesktopError::Vm(_) => SessionErrorCode::Vm,
            };
            send(w, &error(code, nook::error_chain(&e)))
        }
    }
}

fn error(code: SessionErrorCode, message: String) -> SessionReply {
    SessionReply::Error { code, message }
}
