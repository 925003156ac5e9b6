//! A small synchronous QMP (QEMU Machine Protocol) client.
//!
//! QMP is line-delimited JSON over a stream. On connect QEMU sends a greeting
//! (`{"QMP": {...}}`); the client must send `qmp_capabilities` before any
//! other command. Every command gets exactly one reply, `{"return": ...}` or
//! `{"error": {"class", "desc"}}`, echoing the request's `id`; asynchronous
//! events (`{"event": ..., "data": ..., "timestamp": ...}`) may arrive at any
//! time in between and are queued for [`Qmp::take_events`] /
//! [`Qmp::wait_event`].

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

/// Longest QMP message accepted, so a misbehaving peer cannot make us buffer
/// without bound.
const MAX_MESSAGE: usize = 16 << 20;

/// Errors of one QMP exchange.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot {op} on the qmp socket")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("qmp connection closed while waiting for {waiting_for}: qemu has probably exited")]
    Closed { waiting_for: String },
    #[error("no qmp answer within {timeout:?} while waiting for {waiting_for}")]
    Timeout {
        waiting_for: String,
        timeout: Duration,
    },
    #[error("qmp message is not valid json")]
    Malformed {
        #[source]
        source: serde_json::Error,
    },
    #[error("qmp message longer than {MAX_MESSAGE} bytes")]
    TooLong,
    #[error("unexpected qmp message while waiting for {waiting_for}: {message}")]
    Unexpected { waiting_for: String, message: Value },
    #[error("qmp command {command} failed: {class}: {desc}")]
    CommandFailed {
        command: String,
        class: String,
        desc: String,
    },
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name, e.g. `SHUTDOWN`, `STOP`, `RESUME`.
    pub event: String,
    /// Event payload (`null` when the event has none).
    pub data: Value,
    /// QEMU's timestamp, microseconds since the Unix epoch.
    pub timestamp_us: Option<u64>,
}

/// A negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    stream: UnixStream,
    lines: LineReader,
    greeting: Value,
    events: VecDeque<QmpEvent>,
    next_id: u64,
    timeout: Duration,
}

impl Qmp {
    /// Reads the greeting and negotiates capabilities. `timeout` bounds every
    /// later wait for a reply too; change it with [`Qmp::set_timeout`].
    pub fn negotiate(stream: UnixStream, timeout: Duration) -> Result<Qmp, QmpError> {
        let mut qmp = Qmp {
            stream,
            lines: LineReader::default(),
            greeting: Value::Null,
            events: VecDeque::new(),
            next_id: 0,
            timeout,
        };
        let deadline = Instant::now() + timeout;
        let greeting = qmp.read_message(deadline, "the qmp greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Unexpected {
                waiting_for: "the qmp greeting".into(),
                message: greeting,
            });
        }
        qmp.greeting = greeting;
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// The greeting QEMU sent (`{"QMP": {"version": ..., "capabilities": ...}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Sets how long [`Qmp::execute`] waits for a reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs `command` with optional `arguments` (a JSON object) and returns
    /// the value of its `return` member. Events that arrive meanwhile are
    /// queued.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.execute_inner(command, arguments, None)
    }

    /// Like [`Qmp::execute`], with `fd` attached to the command's bytes as
    /// `SCM_RIGHTS`: for `getfd`, which hands QEMU a file descriptor under a
    /// name (`{"fdname": "x"}`) that later commands use as `fd:x`.
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        self.execute_inner(command, arguments, Some(fd))
    }

    fn execute_inner(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "execute": command, "id": id });
        if let (Some(args), Some(obj)) = (arguments, request.as_object_mut()) {
            obj.insert("arguments".into(), args);
        }
        let mut line = request.to_string();
        line.push('\n');
        let waiting = format!("the reply to {command}");
        let sent = match fd {
            // QEMU takes the descriptor that arrived with the command's bytes.
            Some(fd) => crate::sys::send_with_fd(&self.stream, line.as_bytes(), fd),
            None => Ok(0),
        };
        sent.and_then(|n| self.stream.write_all(&line.as_bytes()[n..]))
            .map_err(|source| match source.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => QmpError::Closed {
                    waiting_for: waiting.clone(),
                },
                _ => QmpError::Io {
                    op: "send a command",
                    source,
                },
            })?;
        let deadline = Instant::now() + self.timeout;
        let waiting_for = || waiting.clone();
        loop {
            let mut message = self.read_message(deadline, &waiting)?;
            let Some(obj) = message.as_object_mut() else {
                return Err(QmpError::Unexpected {
                    waiting_for: waiting_for(),
                    message,
                });
            };
            if obj.contains_key("event") {
                self.events.push_back(event_from(obj));
                continue;
            }
            if obj.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(QmpError::Unexpected {
                    waiting_for: waiting_for(),
                    message,
                });
            }
            if let Some(ret) = obj.remove("return") {
                return Ok(ret);
            }
            if let Some(err) = obj.get("error") {
                let field = |k: &str| {
                    err.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("(missing)")
                        .to_owned()
                };
                return Err(QmpError::CommandFailed {
                    command: command.to_owned(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Unexpected {
                waiting_for: waiting_for(),
                message,
            });
        }
    }

    /// Returns the events received so far and forgets them.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.events.drain(..).collect()
    }

    /// Forgets the queued events named `name` (frequent ones nobody waits
    /// for, such as `BALLOON_CHANGE`), keeping the others in order.
    pub fn discard_events(&mut self, name: &str) {
        self.events.retain(|e| e.event != name);
    }

    /// Waits up to `timeout` for an event named `name`, returning it. Other
    /// events stay queued in order.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<QmpEvent, QmpError> {
        if let Some(pos) = self.events.iter().position(|e| e.event == name) {
            if let Some(ev) = self.events.remove(pos) {
                return Ok(ev);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let mut message = self.read_message(deadline, &format!("event {name}"))?;
            let Some(obj) = message.as_object_mut().filter(|o| o.contains_key("event")) else {
                return Err(QmpError::Unexpected {
                    waiting_for: format!("event {name}"),
                    message,
                });
            };
            let ev = event_from(obj);
            if ev.event == name {
                return Ok(ev);
            }
            self.events.push_back(ev);
        }
    }

    fn read_message(&mut self, deadline: Instant, waiting_for: &str) -> Result<Value, QmpError> {
        loop {
            if let Some(line) = self.lines.next_line()? {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map_err(|source| QmpError::Malformed { source });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(QmpError::Timeout {
                    waiting_for: waiting_for.to_owned(),
                    timeout: self.timeout,
                });
            }
            self.stream
                .set_read_timeout(Some(deadline - now))
                .map_err(|source| QmpError::Io {
                    op: "set a read timeout",
                    source,
                })?;
            match self.lines.fill(&mut self.stream) {
                Ok(0) => {
                    return Err(QmpError::Closed {
                        waiting_for: waiting_for.to_owned(),
                    })
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // QEMU closing its end right after answering `quit` may show
                // up as a reset rather than an orderly EOF.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(QmpError::Closed {
                        waiting_for: waiting_for.to_owned(),
                    })
                }
                Err(source) => {
                    return Err(QmpError::Io {
                        op: "read a reply",
                        source,
                    })
                }
            }
        }
    }
}

fn event_from(obj: &mut Map<String, Value>) -> QmpEvent {
    let event = obj
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let data = obj.remove("data").unwrap_or(Value::Null);
    let timestamp_us = obj.get("timestamp").and_then(|t| {
        let s = t.get("seconds")?.as_u64()?;
        let us = t.get("microseconds")?.as_u64()?;
        s.checked_mul(1_000_000)?.checked_add(us)
    });
    QmpEvent {
        event,
        data,
        timestamp_us,
    }
}

/// Splits a byte stream into `\n`-terminated lines, keeping partial lines
/// across read timeouts.
#[derive(Debug, Default)]
struct LineReader {
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
}

impl LineReader {
    fn next_line(&mut self) -> Result<Option<Vec<u8>>, QmpError> {
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(offset) => {
                let end = self.scanned + offset;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.scanned = 0;
                Ok(Some(line))
            }
            None if self.buf.len() > MAX_MESSAGE => Err(QmpError::TooLong),
            None => {
                self.scanned = self.buf.len();
                Ok(None)
            }
        }
    }

    fn fill(&mut self, src: &mut impl Read) -> io::Result<usize> {
        let mut chunk = [0u8; 16 << 10];
        let n = src.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    /// Plays QEMU's side of a QMP session from a script on a named thread.
    fn fake_qemu(
        script: impl FnOnce(&mut BufReader<UnixStream>, &mut UnixStream) + Send + 'static,
    ) -> (UnixStream, std::thread::JoinHandle<()>) {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let handle = std::thread::Builder::new()
            .name("nook-test-fake-qmp".into())
            .spawn(move || {
                let mut reader = BufReader::new(theirs.try_clone().unwrap());
                theirs
                    .write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7}}, \"capabilities\": []}}\r\n")
                    .unwrap();
                let req = read_request(&mut reader);
                assert_eq!(req["execute"], "qmp_capabilities");
                reply(&mut theirs, &req, json!({}));
                script(&mut reader, &mut theirs);
            })
            .unwrap();
        (ours, handle)
    }

    fn read_request(reader: &mut BufReader<UnixStream>) -> Value {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    fn reply(w: &mut UnixStream, req: &Value, ret: Value) {
        let msg = json!({ "return": ret, "id": req["id"] });
        w.write_all(format!("{msg}\r\n").as_bytes()).unwrap();
    }

    #[test]
    fn negotiates_executes_and_queues_events() {
        let (stream, peer) = fake_qemu(|r, w| {
            let req = read_request(r);
            assert_eq!(req["execute"], "query-status");
            assert_eq!(req["arguments"], Value::Null);
            // An event split across two writes arrives before the reply.
            w.write_all(b"{\"event\": \"STOP\", \"data\": {}, ")
                .unwrap();
            std::thread::sleep(Duration::from_millis(20));
            w.write_all(b"\"timestamp\": {\"seconds\": 2, \"microseconds\": 5}}\r\n")
                .unwrap();
            reply(w, &req, json!({"status": "paused", "running": false}));
            let req = read_request(r);
            assert_eq!(req["arguments"]["device"], "disk0");
            reply(w, &req, json!([]));
            w.write_all(b"{\"event\": \"RESUME\"}\r\n{\"event\": \"SHUTDOWN\", \"data\": {\"reason\": \"guest-shutdown\"}}\r\n")
                .unwrap();
        });
        let mut qmp = Qmp::negotiate(stream, Duration::from_secs(5)).unwrap();
        assert_eq!(qmp.greeting()["QMP"]["version"]["qemu"]["major"], 7);
        let status = qmp.execute("query-status", None).unwrap();
        assert_eq!(status["status"], "paused");
        let ret = qmp
            .execute("x-query", Some(json!({"device": "disk0"})))
            .unwrap();
        assert_eq!(ret, json!([]));
        let shutdown = qmp.wait_event("SHUTDOWN", Duration::from_secs(5)).unwrap();
        assert_eq!(shutdown.data["reason"], "guest-shutdown");
        let rest = qmp.take_events();
        let names: Vec<&str> = rest.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(names, ["STOP", "RESUME"]);
        assert_eq!(rest[0].timestamp_us, Some(2_000_005));
        peer.join().unwrap();
    }

    #[test]
    fn command_errors_carry_class_and_desc() {
        let (stream, peer) = fake_qemu(|r, w| {
            let req = read_request(r);
            let msg = json!({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": req["id"]});
            w.write_all(format!("{msg}\r\n").as_bytes()).unwrap();
        });
        let mut qmp = Qmp::negotiate(stream, Duration::from_secs(5)).unwrap();
        let err = qmp.execute("nope", None).unwrap_err();
        match &err {
            QmpError::CommandFailed { class, desc, .. } => {
                assert_eq!(class, "CommandNotFound");
                assert!(desc.contains("nope"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().starts_with("qmp command nope failed"));
        peer.join().unwrap();
    }

    #[test]
    fn eof_timeout_and_garbage_are_errors_not_panics() {
        let (stream, peer) = fake_qemu(|r, w| {
            let _ = read_request(r);
            w.write_all(b"this is not json\r\n").unwrap();
            let _ = read_request(r);
            // no reply: the client times out
            let _ = read_request(r);
            // then hang up
        });
        let mut qmp = Qmp::negotiate(stream, Duration::from_secs(5)).unwrap();
        assert!(matches!(
            qmp.execute("a", None),
            Err(QmpError::Malformed { .. })
        ));
        qmp.set_timeout(Duration::from_millis(50));
        assert!(matches!(
            qmp.execute("b", None),
            Err(QmpError::Timeout { .. })
        ));
        qmp.set_timeout(Duration::from_secs(5));
        assert!(matches!(
            qmp.execute("c", None),
            Err(QmpError::Closed { .. })
        ));
        peer.join().unwrap();
    }

    #[test]
    fn overlong_message_is_rejected() {
        let mut lr = LineReader::default();
        let mut src = io::repeat(b'x').take(MAX_MESSAGE as u64 + 10_000);
        let err = loop {
            match lr.next_line() {
                Err(e) => break e,
                Ok(Some(_)) => panic!("no newline was sent"),
                Ok(None) => {
                    lr.fill(&mut src).unwrap();
                }
            }
        };
        assert!(matches!(err, QmpError::TooLong));
    }

    #[test]
    fn greeting_must_be_a_greeting() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(b"{\"return\": {}}\n").unwrap();
        let err = Qmp::negotiate(ours, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, QmpError::Unexpected { .. }), "{err:?}");
    }
}
