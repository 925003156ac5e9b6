//! The agent channel: a virtio-console port named `nook.agent`, found
//! through sysfs; or, for tests on the host, a Unix socket named by
//! `NOOK_AGENT_SOCKET`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nook_proto::{write_frame, GuestMsg};

pub const PORT_NAME: &str = "nook.agent";

/// How long to wait for the port device to appear after its driver loads.
const PORT_WAIT: Duration = Duration::from_secs(10);

pub fn open_port(name: &str) -> io::Result<File> {
    if let Some(path) = std::env::var_os("NOOK_AGENT_SOCKET") {
        let stream = std::os::unix::net::UnixStream::connect(path)?;
        return Ok(File::from(OwnedFd::from(stream)));
    }
    let deadline = Instant::now() + PORT_WAIT;
    loop {
        if let Some(dev) = find_port(name) {
            return OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/dev/{dev}"));
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no virtio-console port named {name} appeared in {PORT_WAIT:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Returns the device name (`vport0p1`) of the port called `name`, once
/// both its sysfs entry and its /dev node exist.
fn find_port(name: &str) -> Option<String> {
    for entry in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            let dev = entry.file_name().to_string_lossy().into_owned();
            if std::path::Path::new(&format!("/dev/{dev}")).exists() {
                return Some(dev);
            }
        }
    }
    None
}

/// The sending half of the channel, shared by every thread that reports to
/// the host. Each frame goes out with one locked `write_all`.
#[derive(Debug)]
pub struct Sender {
    out: Mutex<File>,
}

impl Sender {
    pub fn new(out: File) -> Sender {
        Sender {
            out: Mutex::new(out),
        }
    }

    pub fn send(&self, stream: u32, msg: &GuestMsg) -> io::Result<()> {
        let frame = msg.to_frame(stream);
        self.raw(stream, frame.kind, &frame.payload)
    }

    pub fn raw(&self, stream: u32, kind: u8, payload: &[u8]) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        write_frame(&mut *out, stream, kind, payload).map_err(|e| match e {
            nook_proto::FrameError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
        })?;
        out.flush()
    }
}
