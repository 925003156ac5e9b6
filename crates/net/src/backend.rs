//! [`NetBackend`]: a VM's network back end, started before the VM and
//! stopped with it. The engine gets the other end of the link, a Unix
//! stream carrying length-prefixed Ethernet frames (see [`crate::link`]).

use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::{Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};

use crate::config::{MacAddr, NetConfig, ParseError, PortMapping, Protocol};
use crate::link::Link;
use crate::metrics::{NetMetrics, NetStats};
use crate::nat::{Listener, Nat, FIRST_LISTENER, LINK, WAKER};

/// Errors starting a network back end.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Config(#[from] ParseError),
    /// A published port's host address cannot be bound.
    #[error("cannot publish {mapping}: is the host port free?")]
    Publish {
        mapping: PortMapping,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the network back end ({what})")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> NetError {
    move |source| NetError::Setup { what, source }
}

/// A published port as bound on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub mapping: PortMapping,
    /// The address actually bound (its port is the kernel's choice when
    /// the mapping asked for port 0).
    pub host: SocketAddr,
}

/// A running back end: the `nook-net` thread. Dropping it stops the
/// thread, closes every flow and the published ports.
#[derive(Debug)]
pub struct NetBackend {
    thread: Option<JoinHandle<()>>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    metrics: Arc<NetMetrics>,
    published: Vec<PublishedPort>,
}

fn bind(m: &PortMapping) -> Result<(Listener, SocketAddr), NetError> {
    let addr = SocketAddr::new(m.host_ip, m.host_port);
    let err = |source| NetError::Publish {
        mapping: *m,
        source,
    };
    Ok(match m.protocol {
        Protocol::Tcp => {
            let l = std::net::TcpListener::bind(addr).map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            let local = l.local_addr().map_err(err)?;
            let socket = mio::net::TcpListener::from_std(l);
            (
                Listener::Tcp {
                    socket,
                    guest_port: m.guest_port,
                },
                local,
            )
        }
        Protocol::Udp => {
            let s = std::net::UdpSocket::bind(addr).map_err(err)?;
            s.set_nonblocking(true).map_err(err)?;
            let local = s.local_addr().map_err(err)?;
            (
                Listener::Udp {
                    socket: mio::net::UdpSocket::from_std(s),
                    guest_port: m.guest_port,
                },
                local,
            )
        }
    })
}

impl NetBackend {
    /// Binds the published ports and starts the back end for a guest NIC
    /// with `guest_mac`. Returns the engine's end of the link.
    pub fn start(
        cfg: &NetConfig,
        guest_mac: MacAddr,
    ) -> Result<(NetBackend, UnixStream), NetError> {
        cfg.validate()?;
        let mut listeners = Vec::new();
        let mut published = Vec::new();
        for m in &cfg.publish {
            let (l, host) = bind(m)?;
            listeners.push(l);
            published.push(PublishedPort { mapping: *m, host });
        }
        let (ours, theirs) = UnixStream::pair().map_err(setup("socket pair"))?;
        ours.set_nonblocking(true).map_err(setup("socket pair"))?;
        let poll = Poll::new().map_err(setup("epoll"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(setup("waker"))?);
        let mut stream = mio::net::UnixStream::from_std(ours);
        poll.registry()
            .register(&mut stream, LINK, Interest::READABLE | Interest::WRITABLE)
            .map_err(setup("epoll"))?;
        for (i, l) in listeners.iter_mut().enumerate() {
            let token = Token(FIRST_LISTENER + i);
            let r = match l {
                Listener::Tcp { socket, .. } => {
                    poll.registry().register(socket, token, Interest::READABLE)
                }
                Listener::Udp { socket, .. } => {
                    poll.registry().register(socket, token, Interest::READABLE)
                }
            };
            r.map_err(setup("epoll"))?;
        }
        let metrics = Arc::new(NetMetrics::default());
        let stop = Arc::new(AtomicBool::new(false));
        let nat = Nat::new(
            poll,
            Link::new(stream),
            cfg,
            guest_mac,
            metrics.clone(),
            listeners,
            waker.clone(),
        );
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("nook-net".into())
            .spawn(move || nat.run(&thread_stop))
            .map_err(setup("thread"))?;
        Ok((
            NetBackend {
                thread: Some(thread),
                waker,
                stop,
                metrics,
                published,
            },
            theirs,
        ))
    }

    /// The counters so far.
    pub fn stats(&self) -> NetStats {
        self.metrics.stats()
    }

    /// The published ports as bound.
    pub fn published(&self) -> &[PublishedPort] {
        &self.published
    }

    /// Stops the back end and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NetBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}
