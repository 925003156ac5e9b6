//! `nook desktop view`: a desktop's display over VNC (RFB) on a host
//! loopback port, with a password made for this view.
//!
//! No guest network is involved. The view starts `x11vnc` in the guest,
//! listening on the guest's loopback only (the first free port from 5900,
//! which it reports as `PORT=N`), with the view's password (read from a
//! file that x11vnc removes once read). x11vnc is an attached command of
//! the view's own session connection, so when the view ends, however it
//! ends (a SIGKILL too), the session kills x11vnc. Each VNC client that connects to the
//! host port gets a small relay in the guest (`python3`, connecting to
//! x11vnc's port), started as an attached session command: the client's
//! bytes go to its stdin, its stdout comes back, over the session's channel
//! as `nook exec` streams do. The desktop keeps whatever network it was
//! started with (none by default).
//!
//! ```text
//! VNC client ─TCP 127.0.0.1:PORT─▶ view (host) ─session exec─▶ relay ─TCP 127.0.0.1:59xx─▶ x11vnc ─X11─▶ Xvfb :0
//! ```
//!
//! (`x11vnc -inetd` would spare the relay, but it needs a socket, not the
//! pipes an exec's stdio are.)

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::{ExecInputSender, RemoteExec, SessionClient};
use crate::error::SessionError;
use crate::wire::{decode_bytes, ExecSpec, SessionReply};

use super::display::{desktop_state, DISPLAY};

/// SIGTERM's number.
const SIGTERM: i32 = 15;

/// Length of a view's password (classic VNC authentication uses at most 8
/// characters).
const PASSWORD_LEN: usize = 8;
/// How often the accept loop checks that the session still runs.
const POLL: Duration = Duration::from_millis(200);
/// How long x11vnc may take to listen.
const X11VNC_WAIT: Duration = Duration::from_secs(30);
/// The guest port x11vnc tries first.
const X11VNC_FIRST_PORT: u16 = 5900;
/// The guest relay: connects to 127.0.0.1:`argv[1]` and copies stdin to
/// the connection and the connection to stdout until either ends.
const RELAY_PY: &str = r#"
import os, socket, sys, threading
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def up():
    while True:
        b = os.read(0, 65536)
        if not b:
            break
        s.sendall(b)
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
threading.Thread(target=up, daemon=True).start()
while True:
    b = s.recv(65536)
    if not b:
        break
    while b:
        b = b[os.write(1, b):]
"#;
/// Bytes read from a VNC client per stdin line.
const CHUNK: usize = 64 * 1024;

/// A VNC server for one desktop session, listening on a loopback port.
#[derive(Debug)]
pub struct VncView {
    home: PathBuf,
    name: String,
    listener: TcpListener,
    password: String,
    /// x11vnc, an attached command of this view's: when the view's
    /// connection to the session closes (the view ends, or its process is
    /// killed), the session kills it.
    x11vnc: ExecInputSender,
    /// The guest port x11vnc listens on.
    guest_port: u16,
}

impl VncView {
    /// Listens on `127.0.0.1:port` (0: a free port) for desktop session
    /// `name`, with a new random password, and starts x11vnc in it.
    pub fn open(home: &Path, name: &str, port: u16) -> Result<VncView, SessionError> {
        desktop_state(home, name)?;
        let client = SessionClient::open(home, name)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listener = TcpListener::bind(addr)
            .map_err(|e| SessionError::io("listen on", Path::new(&addr.to_string()), e))?;
        let port = listener
            .local_addr()
            .map_err(|e| SessionError::io("read the address of", Path::new("the listener"), e))?
            .port();
        let password = random_password()?;
        let password_file = format!("/run/nook-vnc-{port}.passwd");
        let line = format!("{password}\n");
        client.write_from(&password_file, 0o600, &mut line.as_bytes())?;
        let x11vnc = client.exec(ExecSpec {
            argv: x11vnc_argv(&password_file),
            ..ExecSpec::default()
        });
        let started = x11vnc.and_then(|x11vnc| {
            let input = x11vnc.input.try_clone().map_err(SessionError::Connection)?;
            match wait_for_port(x11vnc) {
                Ok(port) => Ok((input, port)),
                Err(e) => {
                    input.hang_up();
                    Err(e)
                }
            }
        });
        let (x11vnc, guest_port) = match started {
            Ok(started) => started,
            Err(e) => {
                let _ = client.remove(&password_file, false);
                return Err(e);
            }
        };
        Ok(VncView {
            home: home.to_path_buf(),
            name: name.to_string(),
            listener,
            password,
            x11vnc,
            guest_port,
        })
    }

    /// The address VNC clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// `vnc://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("vnc://{}", self.addr())
    }

    /// The password clients must give.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Serves VNC clients (each on a thread of its own) until the session
    /// ends or `stop` returns true; then stops x11vnc.
    pub fn serve(&self, stop: &dyn Fn() -> bool) -> Result<(), SessionError> {
        self.listener
            .set_nonblocking(true)
            .map_err(SessionError::Connection)?;
        let result = loop {
            if stop() {
                break Ok(());
            }
            match self.listener.accept() {
                Ok((conn, peer)) => {
                    let client = match SessionClient::open(&self.home, &self.name) {
                        Ok(c) => c,
                        Err(e) => break Err(e),
                    };
                    let guest_port = self.guest_port;
                    let spawned =
                        std::thread::Builder::new()
                            .name("nook-vnc".into())
                            .spawn(move || {
                                if let Err(e) = relay(&client, conn, guest_port) {
                                    tracing::info!("nook desktop view: client {peer}: {e}");
                                }
                            });
                    if let Err(e) = spawned {
                        tracing::warn!("nook desktop view: cannot serve {peer}: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Err(e) = SessionClient::open(&self.home, &self.name) {
                        break Err(e);
                    }
                    std::thread::sleep(POLL);
                }
                Err(e) => break Err(SessionError::Connection(e)),
            }
        };
        self.stop_x11vnc();
        result
    }

    /// Asks x11vnc to end, then closes its connection (which kills it if
    /// it is still there).
    fn stop_x11vnc(&self) {
        if let Ok(mut x11vnc) = self.x11vnc.try_clone() {
            let _ = x11vnc.signal(SIGTERM);
        }
        self.x11vnc.hang_up();
    }
}

impl Drop for VncView {
    fn drop(&mut self) {
        self.stop_x11vnc();
    }
}

/// x11vnc on the desktop's display, on the guest's loopback only, for
/// any number of clients, with the password in `password_file` (which it
/// removes once read: `rm:`).
fn x11vnc_argv(password_file: &str) -> Vec<String> {
    let first = X11VNC_FIRST_PORT.to_string();
    [
        "x11vnc",
        "-display",
        DISPLAY,
        "-localhost",
        "-no6",
        "-autoport",
        &first,
        "-forever",
        "-shared",
        "-passwdfile",
        &format!("rm:{password_file}"),
        "-quiet",
    ]
    .map(String::from)
    .to_vec()
}

/// The port `x11vnc` listens on, from the `PORT=N` line it prints; then
/// reads the rest of its output on a thread of its own until it ends.
fn wait_for_port(mut x11vnc: RemoteExec) -> Result<u16, SessionError> {
    let socket = x11vnc.r.get_ref();
    socket
        .set_read_timeout(Some(X11VNC_WAIT))
        .map_err(SessionError::Connection)?;
    let mut seen = Vec::new();
    let port = loop {
        let failed = |seen: &[u8], why: &str| {
            let log: String = String::from_utf8_lossy(seen)
                .trim()
                .chars()
                .take(2000)
                .collect();
            SessionError::ViewFailed(format!("x11vnc did not start listening ({why}): {log}"))
        };
        let data = match x11vnc.next_reply() {
            Ok(Some(SessionReply::Stdout { data } | SessionReply::Stderr { data })) => data,
            Ok(Some(SessionReply::Exit { .. }) | None) => return Err(failed(&seen, "it exited")),
            Ok(Some(other)) => return Err(failed(&seen, &format!("{other:?}"))),
            Err(SessionError::Connection(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                let why = format!("not in {} s", X11VNC_WAIT.as_secs());
                return Err(failed(&seen, &why));
            }
            Err(e) => return Err(e),
        };
        seen.extend(decode_bytes(&data).map_err(|e| SessionError::Protocol(e.to_string()))?);
        let text = String::from_utf8_lossy(&seen);
        if let Some(port) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("PORT=")?.parse::<u16>().ok())
        {
            break port;
        }
        if seen.len() > 64 * 1024 {
            return Err(failed(&seen, "no PORT= line"));
        }
    };
    x11vnc
        .r
        .get_ref()
        .set_read_timeout(None)
        .map_err(SessionError::Connection)?;
    // Its output is read (and dropped) so that it never waits on a full pipe.
    std::thread::Builder::new()
        .name("nook-x11vnc".into())
        .spawn(move || while let Ok(Some(_)) = x11vnc.next_reply() {})
        .map_err(SessionError::Connection)?;
    Ok(port)
}

/// Relays VNC client `conn` to x11vnc's `guest_port` through a relay in
/// the session until either side ends.
fn relay(client: &SessionClient, conn: TcpStream, guest_port: u16) -> Result<(), SessionError> {
    conn.set_nonblocking(false)
        .map_err(SessionError::Connection)?;
    let _ = conn.set_nodelay(true);
    let mut remote = client.exec(ExecSpec {
        argv: ["python3", "-c", RELAY_PY, &guest_port.to_string()]
            .map(String::from)
            .to_vec(),
        stdin: true,
        ..ExecSpec::default()
    })?;
    let mut from_client = conn.try_clone().map_err(SessionError::Connection)?;
    let input = remote.input.try_clone().map_err(SessionError::Connection)?;
    let upstream = std::thread::Builder::new()
        .name("nook-vnc-in".into())
        .spawn(move || client_to_guest(&mut from_client, input))
        .map_err(SessionError::Connection)?;
    let mut to_client = conn;
    let result = loop {
        match remote.next_reply() {
            Ok(Some(SessionReply::Stdout { data })) => {
                let bytes = decode_bytes(&data).map_err(|e| SessionError::Protocol(e.to_string()));
                match bytes {
                    Ok(b) if to_client.write_all(&b).is_ok() => {}
                    Ok(_) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
            Ok(Some(SessionReply::Stderr { .. })) => {}
            Ok(Some(SessionReply::Exit { .. })) | Ok(None) => break Ok(()),
            Ok(Some(SessionReply::Error { code, message })) => {
                break Err(SessionError::Refused { code, message })
            }
            Ok(Some(other)) => {
                break Err(SessionError::Protocol(format!(
                    "expected output or the exit, got {other:?}"
                )))
            }
            Err(e) => break Err(e),
        }
    };
    // Ends the upstream thread's read, and x11vnc with the connection.
    let _ = to_client.shutdown(std::net::Shutdown::Both);
    remote.input.hang_up();
    let _ = upstream.join();
    result
}

/// Copies what the VNC client sends to x11vnc's stdin.
fn client_to_guest(conn: &mut TcpStream, mut input: ExecInputSender) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if input.stdin(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = input.close_stdin();
    input.hang_up();
}

/// Eight random letters and digits from the kernel's generator.
fn random_password() -> Result<String, SessionError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| SessionError::io("read", Path::new("/dev/urandom"), e))?;
    // Rejection sampling keeps the choice uniform.
    let limit = 256 - 256 % ALPHABET.len();
    let password: String = bytes
        .iter()
        .filter(|b| usize::from(**b) < limit)
        .take(PASSWORD_LEN)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    if password.len() < PASSWORD_LEN {
        // 64 bytes with fewer than 8 usable is vanishingly unlikely.
        return random_password();
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_eight_unambiguous_characters_and_differ() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_eq!(a.len(), PASSWORD_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert!(!a.contains(['0', 'O', '1', 'l', 'I']), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn x11vnc_serves_the_desktop_display_on_loopback_with_the_password_file() {
        let argv = x11vnc_argv("/run/p");
        assert_eq!(argv[0], "x11vnc");
        assert!(argv.contains(&"-localhost".to_string()));
        let at = |flag: &str| {
            let i = argv.iter().position(|a| a == flag).unwrap();
            argv[i + 1].clone()
        };
        assert_eq!(at("-display"), ":0");
        assert_eq!(at("-passwdfile"), "rm:/run/p");
        assert_eq!(at("-autoport"), "5900");
    }
}
