//! Running one command in a session and pumping its stdio: output streamed
//! as it comes, the shell's stdin forwarded (raw, on a terminal) only while
//! the command runs, Ctrl-C and resizes passed on.

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use nook_serve::wire::{decode_bytes, ExecSpec, SessionErrorCode, SessionReply};
use nook_serve::{ExecInputSender, SessionClient, SessionError};

use crate::backend::{GuestCommand, GuestStdin};
use crate::error::ShellError;
use crate::signals::Signals;
use crate::term;

/// How often the pump looks at Ctrl-C and resizes.
const TICK: Duration = Duration::from_millis(50);

enum Event {
    Reply(Result<Option<SessionReply>, SessionError>),
}

/// Runs `cmd` in the session behind `client`; returns its exit code.
pub fn run(
    client: &SessionClient,
    cmd: &GuestCommand,
    stdin: GuestStdin,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    signals: &Signals,
) -> Result<i32, ShellError> {
    let spec = ExecSpec {
        argv: cmd.argv.clone(),
        env: cmd.env.clone(),
        cwd: Some(cmd.cwd.clone()),
        tty: cmd
            .tty
            .then(|| term::size().unwrap_or(nook::Winsize { rows: 24, cols: 80 })),
        stdin: true,
        timeout_ms: cmd.timeout_ms,
        ..ExecSpec::default()
    };
    let mut remote = match client.exec(spec) {
        Ok(r) => r,
        Err(SessionError::Refused { code, message }) => {
            let _ = writeln!(stderr, "nook shell: {message}");
            return Ok(match code {
                SessionErrorCode::NotFound => 127,
                SessionErrorCode::NotExecutable => 126,
                _ => 126,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let mut control = remote
        .input
        .try_clone()
        .map_err(|e| ShellError::io("use", "the session socket", e))?;
    let (tx, rx) = channel::<Event>();
    std::thread::Builder::new()
        .name("nook-shell-exec".into())
        .spawn(move || loop {
            let r = remote.next_reply();
            let last = !matches!(
                r,
                Ok(Some(
                    SessionReply::Stdout { .. } | SessionReply::Stderr { .. }
                ))
            );
            if tx.send(Event::Reply(r)).is_err() || last {
                break;
            }
        })
        .map_err(|e| ShellError::io("spawn a thread for", "the command", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let raw = match stdin {
        GuestStdin::Bytes(bytes) => {
            let mut input = control
                .try_clone()
                .map_err(|e| ShellError::io("use", "the session socket", e))?;
            let _ = std::thread::Builder::new()
                .name("nook-shell-stdin".into())
                .spawn(move || {
                    for chunk in bytes.chunks(64 * 1024) {
                        if input.stdin(chunk).is_err() {
                            return;
                        }
                    }
                    let _ = input.close_stdin();
                });
            None
        }
        GuestStdin::Shell => {
            let raw = if cmd.tty {
                term::RawMode::enable()
            } else {
                None
            };
            let input = control
                .try_clone()
                .map_err(|e| ShellError::io("use", "the session socket", e))?;
            forward_stdin(input, stop.clone(), !cmd.tty);
            raw
        }
    };
    let mut interrupts = signals.interrupts.load(Ordering::Relaxed);
    let mut resizes = signals.resizes.load(Ordering::Relaxed);
    let code = loop {
        match rx.recv_timeout(TICK) {
            Ok(Event::Reply(Ok(Some(reply)))) => match reply {
                SessionReply::Stdout { data } => {
                    let _ = stdout.write_all(&decode_bytes(&data).unwrap_or_default());
                }
                SessionReply::Stderr { data } => {
                    let _ = stderr.write_all(&decode_bytes(&data).unwrap_or_default());
                }
                SessionReply::Exit {
                    code,
                    signal,
                    timed_out,
                } => {
                    if timed_out {
                        let _ = writeln!(
                            stderr,
                            "nook shell: {}: timed out and was killed",
                            cmd.argv[0]
                        );
                    }
                    break nook::ExitStatus {
                        code,
                        signal,
                        timed_out,
                    }
                    .shell_code();
                }
                SessionReply::Error { message, .. } => {
                    let _ = writeln!(stderr, "nook shell: {message}");
                    break 126;
                }
                other => {
                    let _ = writeln!(
                        stderr,
                        "nook shell: unexpected reply from the session: {other:?}"
                    );
                    break 126;
                }
            },
            Ok(Event::Reply(Ok(None))) => {
                let _ = writeln!(
                    stderr,
                    "nook shell: the session closed the command without an exit"
                );
                break 126;
            }
            Ok(Event::Reply(Err(e))) => {
                stop.store(true, Ordering::Relaxed);
                drop(raw);
                return Err(e.into());
            }
            Err(RecvTimeoutError::Disconnected) => break 126,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = signals.interrupts.load(Ordering::Relaxed);
        if now != interrupts {
            interrupts = now;
            // The whole process group of the command.
            let _ = control.signal(2);
        }
        let now = signals.resizes.load(Ordering::Relaxed);
        if now != resizes {
            resizes = now;
            if let (true, Some(ws)) = (cmd.tty, term::size()) {
                let _ = control.resize(ws.rows, ws.cols);
            }
        }
    };
    stop.store(true, Ordering::Relaxed);
    drop(raw);
    let _ = stdout.flush();
    Ok(code)
}

/// Copies the shell's stdin to the command until `stop` (checked every
/// tick, so nothing typed after the command ended is taken from the
/// shell); at end of input closes the command's stdin when `close_at_end`.
fn forward_stdin(mut sink: ExecInputSender, stop: Arc<AtomicBool>, close_at_end: bool) {
    let _ = std::thread::Builder::new()
        .name("nook-shell-stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                let mut fds = [rustix::event::PollFd::new(
                    &stdin,
                    rustix::event::PollFlags::IN,
                )];
                let timeout = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: TICK.as_nanos() as i64,
                };
                match rustix::event::poll(&mut fds, Some(&timeout)) {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => break,
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match rustix::io::read(stdin.as_fd(), &mut buf) {
                    Ok(0) => {
                        if close_at_end {
                            let _ = sink.close_stdin();
                        }
                        break;
                    }
                    Ok(n) => {
                        if sink.stdin(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                    Err(_) => break,
                }
            }
        });
}
