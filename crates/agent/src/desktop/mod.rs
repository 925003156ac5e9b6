//! Desktop actions on the guest's X display (see `nook_proto::desktop`).
//!
//! Requests run one after another on a thread of their own (`nook-desktop`),
//! which keeps one X connection open across requests (reconnecting after a
//! failure), so a `wait` or a slow screenshot never stalls the request loop.

mod actions;
mod image;
mod keys;
mod shm;
mod x11;

#[cfg(test)]
mod tests;

use std::sync::mpsc::{channel, Sender as JobSender};
use std::sync::Arc;

use nook_proto::{
    DesktopReply, DesktopRequest, ErrorCode, ErrorReply, GuestMsg, Kind, STDIO_CHUNK,
};

use crate::channel::Sender;

/// Why a desktop request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesktopFailure {
    /// The request is invalid (a coordinate off the screen, a bad key name).
    BadRequest(String),
    /// The X display cannot be reached.
    NoDisplay(String),
    /// The X server failed the request, or the connection broke.
    X(String),
}

impl DesktopFailure {
    fn reply(&self) -> ErrorReply {
        let (code, message) = match self {
            DesktopFailure::BadRequest(m) => (ErrorCode::BadRequest, m),
            DesktopFailure::NoDisplay(m) => (ErrorCode::NotFound, m),
            DesktopFailure::X(m) => (ErrorCode::Internal, m),
        };
        ErrorReply {
            code,
            message: message.clone(),
        }
    }
}

/// What a performed action hands back: the reply, and the PNG for an image.
#[derive(Debug)]
pub struct Outcome {
    pub reply: DesktopReply,
    pub png: Vec<u8>,
}

struct Job {
    stream: u32,
    req: DesktopRequest,
}

/// The handle of the desktop thread, started by the first request.
#[derive(Debug, Default)]
pub struct Desktop {
    jobs: Option<JobSender<Job>>,
}

impl Desktop {
    /// Queues `req` (from `stream`); its reply goes out on `out`.
    pub fn request(&mut self, stream: u32, req: DesktopRequest, out: &Arc<Sender>) {
        let job = Job { stream, req };
        let job = match &self.jobs {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => job,
        };
        let (tx, rx) = channel::<Job>();
        let thread_out = out.clone();
        let spawned = std::thread::Builder::new()
            .name("nook-desktop".into())
            .spawn(move || {
                let mut session = actions::Session::default();
                for job in rx {
                    let result = session.perform(&job.req);
                    if let Err(e) = send_result(&thread_out, job.stream, result) {
                        crate::log(&format!("desktop: cannot send a reply: {e}"));
                    }
                }
            });
        match spawned {
            Ok(_) => {
                // The thread is new: the send cannot fail unless it died.
                let _ = tx.send(job);
                self.jobs = Some(tx);
            }
            Err(e) => {
                let failure = DesktopFailure::X(format!("cannot start the desktop thread: {e}"));
                let _ = send_result(out, job.stream, Err(failure));
            }
        }
    }
}

fn send_result(
    out: &Sender,
    stream: u32,
    result: Result<Outcome, DesktopFailure>,
) -> std::io::Result<()> {
    match result {
        Ok(o) => {
            for chunk in o.png.chunks(STDIO_CHUNK) {
                out.raw(stream, Kind::DesktopImage as u8, chunk)?;
            }
            out.send(stream, &GuestMsg::DesktopDone(o.reply))
        }
        Err(f) => out.send(stream, &GuestMsg::Error(f.reply())),
    }
}
