//! The request loop: handshake, then dispatch frames until shutdown.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader};
use std::sync::{Arc, Mutex};

use nook_proto::{
    read_frame, ErrorCode, ErrorReply, GuestHello, GuestMsg, HostMsg, CONTROL_STREAM,
    PROTOCOL_VERSION,
};

use crate::channel::Sender;
use crate::desktop::Desktop;
use crate::exec::{self, Running};
use crate::files::Files;
use crate::reaper::Reaper;
use crate::{entropy, log, tty};

type Table = Arc<Mutex<HashMap<u32, Running>>>;

/// Serves the host on `port` until a shutdown request (`Ok`) or until the
/// channel fails or the host speaks another protocol version (`Err`).
pub fn serve(port: File, pid1: bool) -> io::Result<()> {
    let out = Arc::new(Sender::new(port.try_clone()?));
    let mut input = BufReader::with_capacity(64 * 1024, port);
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    out.send(
        CONTROL_STREAM,
        &GuestMsg::Hello(GuestHello {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: release,
            features: vec![nook_proto::FEATURE_DESKTOP.to_string()],
        }),
    )?;
    handshake(&mut input, &out, pid1)?;

    let reaper = Reaper::start()?;
    let table: Table = Arc::new(Mutex::new(HashMap::new()));
    let mut files = Files::default();
    let mut desktop = Desktop::default();
    loop {
        let frame = match read_frame(&mut input) {
            Ok(Some(f)) => f,
            Ok(None) => {
                files.clear();
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "host closed the channel",
                ));
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        };
        let stream = frame.stream;
        let msg = match HostMsg::from_frame(&frame) {
            Ok(m) => m,
            Err(e) => {
                log(&format!("ignoring frame: {e}"));
                let answered = [
                    nook_proto::Kind::Exec as u8,
                    nook_proto::Kind::Desktop as u8,
                ];
                if stream != CONTROL_STREAM && answered.contains(&frame.kind) {
                    let _ = out.send(stream, &error(ErrorCode::BadRequest, e.to_string()));
                }
                continue;
            }
        };
        match msg {
            HostMsg::Exec(req) => start_exec(stream, req, &out, &reaper, &table),
            HostMsg::Stdin(data) => {
                let t = table.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(r) = t.get(&stream) {
                    if let Err(e) = r.pipes.feed_stdin(data) {
                        log(&format!("stream {stream}: the host broke flow control ({e}): killing the command"));
                        r.signal(libc::SIGKILL);
                    }
                }
            }
            HostMsg::Credit(c) => {
                if let Some(r) = table.lock().unwrap_or_else(|p| p.into_inner()).get(&stream) {
                    r.pipes.credit(c);
                }
            }
            HostMsg::PipeClosed(c) => {
                if let Some(r) = table.lock().unwrap_or_else(|p| p.into_inner()).get(&stream) {
                    r.pipes.close(c.pipe);
                }
            }
            HostMsg::Signal(sig) => {
                if let Some(r) = table.lock().unwrap_or_else(|p| p.into_inner()).get(&stream) {
                    r.signal(sig);
                }
            }
            HostMsg::Resize(ws) => {
                if let Some(pty) = table
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&stream)
                    .and_then(|r| r.pty.clone())
                {
                    let _ = tty::resize(&pty, ws);
                }
            }
            HostMsg::File(req) => files.request(stream, req, &out),
            HostMsg::FileChunk(data) => files.chunk(stream, &data, &out),
            HostMsg::Desktop(req) => desktop.request(stream, req, &out),
            HostMsg::Shutdown => {
                files.clear();
                return Ok(());
            }
            HostMsg::Resync(r) => {
                if pid1 {
                    set_clock(r.time_ns);
                    if let Err(e) = entropy::reseed(&r.entropy) {
                        log(&format!("cannot reseed the entropy pool: {e}"));
                    }
                    if let Some(mac) = &r.mac {
                        if let Err(e) = crate::net::set_mac(mac) {
                            log(&format!("cannot give the NIC its new MAC: {e}"));
                        }
                    }
                }
            }
            HostMsg::Hello(_) => {}
        }
    }
}

fn error(code: ErrorCode, message: String) -> GuestMsg {
    GuestMsg::Error(ErrorReply { code, message })
}

/// Waits for the host's hello. Fails closed: a version mismatch ends the
/// agent (and so the VM) after telling the host why.
fn handshake(input: &mut BufReader<File>, out: &Sender, pid1: bool) -> io::Result<()> {
    loop {
        let frame = read_frame(input)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "host closed the channel")
            })?;
        match HostMsg::from_frame(&frame) {
            Ok(HostMsg::Hello(h)) if h.protocol == PROTOCOL_VERSION => {
                if let (Some(ns), true) = (h.time_ns, pid1) {
                    set_clock(ns);
                }
                return Ok(());
            }
            Ok(HostMsg::Hello(h)) => {
                let msg = format!(
                    "host speaks protocol {}, agent speaks {PROTOCOL_VERSION}: rebuild the guest assets (nook setup)",
                    h.protocol
                );
                let _ = out.send(
                    CONTROL_STREAM,
                    &error(ErrorCode::VersionMismatch, msg.clone()),
                );
                return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
            }
            _ => {
                // Nothing is served before the handshake.
                let _ = out.send(
                    frame.stream,
                    &error(
                        ErrorCode::VersionMismatch,
                        "request before handshake".into(),
                    ),
                );
            }
        }
    }
}

fn set_clock(ns: u64) {
    let ts =
        nix::sys::time::TimeSpec::new((ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i64);
    if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
        log(&format!("cannot set the clock: {e}"));
    }
}

fn start_exec(
    stream: u32,
    req: nook_proto::ExecRequest,
    out: &Arc<Sender>,
    reaper: &Reaper,
    table: &Table,
) {
    let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
    if stream == CONTROL_STREAM || t.contains_key(&stream) {
        let _ = out.send(
            stream,
            &error(ErrorCode::BadRequest, format!("stream {stream} is in use")),
        );
        return;
    }
    let done_table = table.clone();
    match exec::start(stream, req, out.clone(), reaper, move || {
        done_table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&stream);
    }) {
        Ok(running) => {
            t.insert(stream, running);
        }
        Err(reply) => {
            let _ = out.send(stream, &GuestMsg::Error(reply));
        }
    }
}
