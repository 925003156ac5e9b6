//! Desktop actions on a VM's X display: [`GuestDesktop`], from
//! [`crate::Vm::desktop`]. The agent talks X11 itself (see
//! `nook_proto::desktop`); this side sends one request per stream and
//! collects the PNG and the reply.

use std::sync::Arc;

use nook_proto::{DesktopReply, DesktopRequest, ErrorCode, HostMsg, Kind, FEATURE_DESKTOP};

use crate::conn::{Conn, Event};
use crate::error::{ChannelLoss, ProtocolViolation, VmError};

/// Largest PNG a desktop action may return (a 8192x8192 screen that does
/// not compress at all is 192 MiB; real screens are far below).
pub const MAX_DESKTOP_IMAGE: usize = 256 * 1024 * 1024;

/// Why a desktop action failed, as a stable kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesktopErrorKind {
    /// The action is invalid: a coordinate off the screen, an unknown key
    /// name, a duration out of range.
    BadRequest,
    /// The guest has no X display running (start the desktop first).
    NoDisplay,
    /// The X server or the agent failed.
    Failed,
}

/// What can go wrong with a desktop action.
#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    #[error(
        "the guest agent has no desktop support: update nook's guest assets (nook setup --update)"
    )]
    Unsupported,
    #[error("desktop action {action}: {message}")]
    Guest {
        action: &'static str,
        kind: DesktopErrorKind,
        message: String,
    },
    #[error(
        "desktop action {action}: the guest sent an image larger than {MAX_DESKTOP_IMAGE} bytes"
    )]
    ImageTooLarge { action: &'static str },
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// Desktop actions on a VM's guest; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct GuestDesktop {
    pub(crate) conn: Arc<Conn>,
}

impl GuestDesktop {
    /// Whether the guest's agent serves desktop actions.
    pub fn supported(&self) -> bool {
        self.conn
            .hello
            .features
            .iter()
            .any(|f| f == FEATURE_DESKTOP)
    }

    /// Carries out `req` in the guest: its reply and, for an image, the PNG.
    pub fn request(&self, req: &DesktopRequest) -> Result<(DesktopReply, Vec<u8>), DesktopError> {
        if !self.supported() {
            return Err(DesktopError::Unsupported);
        }
        let action = req.action.name();
        let (id, rx, _flow) = self.conn.open_stream()?;
        let _close = CloseStream(&self.conn, id);
        self.conn.send(id, &HostMsg::Desktop(req.clone()))?;
        let mut png = Vec::new();
        loop {
            let event = rx
                .recv()
                .map_err(|_| VmError::ChannelLost(ChannelLoss::VmGone))?;
            match event {
                Event::DesktopImage(b) => {
                    if png.len() + b.len() > MAX_DESKTOP_IMAGE {
                        return Err(DesktopError::ImageTooLarge { action });
                    }
                    png.extend_from_slice(&b);
                }
                Event::DesktopDone(reply) => return Ok((reply, png)),
                Event::Error(e) => {
                    let kind = match e.code {
                        ErrorCode::BadRequest => DesktopErrorKind::BadRequest,
                        ErrorCode::NotFound => DesktopErrorKind::NoDisplay,
                        _ => DesktopErrorKind::Failed,
                    };
                    return Err(DesktopError::Guest {
                        action,
                        kind,
                        message: e.message,
                    });
                }
                Event::Lost(why) => return Err(VmError::ChannelLost(why).into()),
                Event::Overrun(pipe, source) => {
                    return Err(VmError::Protocol(ProtocolViolation::WindowOverrun {
                        pipe,
                        source,
                    })
                    .into())
                }
                other => {
                    let got = match other {
                        Event::Started(_) => Kind::Started,
                        Event::Stdout(_) => Kind::Stdout,
                        Event::Stderr(_) => Kind::Stderr,
                        Event::Exit(_) => Kind::Exit,
                        Event::FileContent(_) => Kind::FileContent,
                        _ => Kind::FileDone,
                    };
                    return Err(VmError::Protocol(ProtocolViolation::Unexpected {
                        expected: "a desktop reply",
                        got,
                    })
                    .into());
                }
            }
        }
    }
}

/// Closes a stream when dropped.
struct CloseStream<'a>(&'a Conn, u32);

impl Drop for CloseStream<'_> {
    fn drop(&mut self) {
        self.0.close_stream(self.1);
    }
}
