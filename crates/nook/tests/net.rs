//! Networking end to end on real guests (the qemu engine under TCG here):
//! off by default, the host alias, domain rules with nook's DNS, published
//! ports, many concurrent connections, and clones of a snapshot. Every
//! test stays on this machine: the only servers are on the host's
//! loopback, and refused flows never leave the NAT.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nook::{NetConfig, Vm, VmConfig};

mod support;
use support::guest::ready;

fn cfg(net: Option<NetConfig>) -> VmConfig {
    VmConfig {
        progress: false,
        net,
        ..VmConfig::default()
    }
}

fn net(allow: &[&str], hosts: &[&str]) -> NetConfig {
    NetConfig {
        allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
        hosts: hosts.iter().map(|s| s.parse().unwrap()).collect(),
        ..NetConfig::default()
    }
}

/// Runs `script` in the guest: (exit code, stdout, stderr).
fn sh(vm: &Vm, script: &str) -> (i32, String, String) {
    let out = vm.exec(["sh", "-c", script]).output().expect("exec");
    (
        out.status.code.unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Deterministic bytes for `path` (`/N` gives `N` KiB, other paths 10 MiB).
fn body(path: &str) -> Vec<u8> {
    let kib: usize = path.trim_start_matches('/').parse().unwrap_or(10 * 1024);
    let seed = path
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    let mut x = seed | 1;
    (0..kib * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn sha256(data: &[u8]) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A tiny HTTP/1.0 server on the host's 127.0.0.1 serving [`body`]. With
/// `gate`, every response waits until that many connections are open at
/// once (or 120 s pass), which proves they were concurrent.
struct HttpServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl HttpServer {
    fn start(gate: usize) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let open = Arc::new((Mutex::new(0usize), Condvar::new()));
        let (acc, pk) = (accepted.clone(), peak.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                acc.fetch_add(1, Ordering::SeqCst);
                let (open, pk) = (open.clone(), pk.clone());
                std::thread::spawn(move || {
                    let mut path = String::new();
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 {
                        if path.is_empty() {
                            path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                        }
                        if line == "\r\n" {
                            break;
                        }
                        line.clear();
                    }
                    let (lock, cv) = &*open;
                    let mut n = lock.lock().unwrap();
                    *n += 1;
                    pk.fetch_max(*n, Ordering::SeqCst);
                    cv.notify_all();
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while gate > 0 && pk.load(Ordering::SeqCst) < gate && Instant::now() < deadline
                    {
                        n = cv.wait_timeout(n, Duration::from_millis(200)).unwrap().0;
                    }
                    drop(n);
                    let data = body(&path);
                    let head = format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        data.len()
                    );
                    let _ = conn.write_all(head.as_bytes());
                    let _ = conn.write_all(&data);
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                    *lock.lock().unwrap() -= 1;
                });
            }
        });
        HttpServer {
            port,
            accepted,
            peak,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

#[test]
fn without_net_the_guest_has_only_lo_and_reaches_nothing() {
    if !ready() {
        return;
    }
    let server = HttpServer::start(0);
    let vm = Vm::start(cfg(None)).expect("boot");
    let (_, links, _) = sh(&vm, "ls /sys/class/net");
    assert_eq!(links, "lo\n");
    let (_, up, _) = sh(&vm, "ip -o link show up | wc -l");
    assert_eq!(up.trim(), "1", "lo is up, nothing else exists");
    let (rc, _, _) = sh(
        &vm,
        &format!("timeout 3 wget -q -O - http://10.0.2.2:{}/1", server.port),
    );
    assert_ne!(rc, 0, "no route anywhere");
    assert!(vm.net_stats().is_none());
    vm.stop().unwrap();
    assert_eq!(server.accepted(), 0);
}

#[test]
fn the_host_alias_serves_10_mib_when_allowed_and_is_refused_otherwise() {
    if !ready() {
        return;
    }
    let server = HttpServer::start(0);
    let rule = format!("host.nook.internal:{}", server.port);
    let vm = Vm::start(cfg(Some(net(&[&rule], &[])))).expect("boot");
    let (rc, out, err) = sh(
        &vm,
        &format!(
            "wget -q -O - http://host.nook.internal:{}/blob | sha256sum",
            server.port
        ),
    );
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        out.split_whitespace().next().unwrap_or_default(),
        sha256(&body("/blob"))
    );
    let stats = vm.net_stats().unwrap();
    assert_eq!(stats.tcp_flows, 1);
    assert!(stats.bytes_in >= 10 << 20, "{stats:?}");
    vm.stop().unwrap();
    assert_eq!(server.accepted(), 1);

    // --net alone: the host's loopback is not reachable.
    let vm = Vm::start(cfg(Some(NetConfig::default()))).expect("boot");
    let (rc, _, _) = sh(
        &vm,
        &format!(
            "timeout 5 wget -q -O - http://host.nook.internal:{}/1",
            server.port
        ),
    );
    assert_ne!(rc, 0);
    let stats = vm.net_stats().unwrap();
    assert!(stats.refused_flows >= 1, "{stats:?}");
    let last = stats.recent_refusals.last().unwrap();
    assert_eq!(last.destination, format!("10.0.2.2:{}", server.port));
    assert!(last.reason.contains("127.0.0.0/8"), "{last:?}");
    vm.stop().unwrap();
    assert_eq!(
        server.accepted(),
        1,
        "the refused flow never reached the host"
    );
}

#[test]
fn domain_rules_resolve_and_connect_only_allowed_names() {
    if !ready() {
        return;
    }
    let server = HttpServer::start(0);
    let rule = format!("allowed.test:{}", server.port);
    let vm = Vm::start(cfg(Some(net(
        &[&rule],
        &["allowed.test:127.0.0.1", "other.test:127.0.0.1"],
    ))))
    .expect("boot");
    let (_, out, _) = sh(&vm, "cat /etc/resolv.conf; nslookup allowed.test");
    assert!(out.contains("nameserver 10.0.2.3"), "{out}");
    assert!(out.contains("10.0.2.2"), "allowed.test resolves: {out}");
    let (rc, out, err) = sh(
        &vm,
        &format!(
            "wget -q -O - http://allowed.test:{}/3 | sha256sum",
            server.port
        ),
    );
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with(&sha256(&body("/3"))), "{out}");
    let (_, out, _) = sh(&vm, "nslookup other.test; echo rc=$?");
    assert!(
        !out.contains("10.0.2.2"),
        "other.test must not resolve: {out}"
    );
    let before = vm.net_stats().unwrap().refused_flows;
    assert!(before >= 1, "the refused name is counted");
    // A raw address no allowed name resolved to, and another host port.
    let (rc, _, _) = sh(&vm, "echo x | nc -w 3 192.0.2.1 80");
    assert_ne!(rc, 0);
    let (rc, _, _) = sh(
        &vm,
        &format!(
            "timeout 5 wget -q -O - http://10.0.2.2:{}/1",
            server.port + 1
        ),
    );
    assert_ne!(rc, 0);
    let stats = vm.net_stats().unwrap();
    assert_eq!(stats.refused_flows, before + 2, "{stats:?}");
    assert!(stats
        .recent_refusals
        .iter()
        .any(|r| r.destination == "192.0.2.1:80" && r.reason.contains("--allow")));
    vm.stop().unwrap();
    assert_eq!(server.accepted(), 1);
}

/// GETs `path` from `addr` until the guest's server answers.
fn http_get(addr: SocketAddr, path: &str, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
            let mut resp = Vec::new();
            let _ = s.read_to_end(&mut resp);
            if resp.starts_with(b"HTTP/1.") && resp.windows(4).any(|w| w == b"\r\n\r\n") {
                let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                return resp[split..].to_vec();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the published port never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_published_port_serves_the_guest_and_closes_with_the_vm() {
    if !ready() {
        return;
    }
    let mut n = NetConfig::default();
    n.publish.push("127.0.0.1:0:8000".parse().unwrap());
    let vm = Vm::start(cfg(Some(n))).expect("boot");
    let published = vm.published_ports()[0];
    assert_eq!(published.host.ip(), Ipv4Addr::LOCALHOST);
    let (rc, _, err) = sh(
        &vm,
        "mkdir -p /srv && echo hello-from-the-guest > /srv/f && httpd -p 8000 -h /srv",
    );
    assert_eq!(rc, 0, "{err}");
    let got = http_get(published.host, "/f", Duration::from_secs(60));
    assert_eq!(got, b"hello-from-the-guest\n");
    assert!(vm.net_stats().unwrap().published_connections >= 1);
    vm.stop().unwrap();
    let refused = TcpStream::connect_timeout(&published.host, Duration::from_secs(2));
    assert!(refused.is_err(), "the port outlived the VM");
}

#[test]
fn fifty_concurrent_connections_complete_with_correct_data() {
    if !ready() {
        return;
    }
    const N: usize = 50;
    let server = HttpServer::start(N);
    let rule = format!("host.nook.internal:{}", server.port);
    let vm = Vm::start(cfg(Some(net(&[&rule], &[])))).expect("boot");
    let script = format!(
        "for i in $(seq 1 {N}); do wget -q -O /tmp/o$i http://host.nook.internal:{}/$((i + 10)) & done; \
         wait; for i in $(seq 1 {N}); do sha256sum /tmp/o$i; done",
        server.port
    );
    let (rc, out, err) = sh(&vm, &script);
    assert_eq!(rc, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), N, "{out}");
    for (i, line) in lines.iter().enumerate() {
        let want = sha256(&body(&format!("/{}", i + 11)));
        assert!(line.starts_with(&want), "connection {}: {line}", i + 1);
    }
    assert_eq!(server.accepted(), N);
    assert_eq!(server.peak.load(Ordering::SeqCst), N, "all open at once");
    vm.stop().unwrap();
}

#[test]
fn a_restored_clone_gets_a_fresh_mac_and_its_own_back_end() {
    if !ready() {
        return;
    }
    let server = HttpServer::start(0);
    let rule = format!("host.nook.internal:{}", server.port);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("net");
    let parent_mac;
    {
        let vm = Vm::start(cfg(Some(net(&[&rule], &[])))).expect("boot");
        parent_mac = sh(&vm, "cat /sys/class/net/eth0/address").1;
        vm.snapshot(&snap).expect("snapshot");
    }
    let clone = Vm::restore(&snap, &cfg(None)).expect("restore");
    let (_, mac, _) = sh(&clone, "cat /sys/class/net/eth0/address");
    assert_ne!(mac, parent_mac, "a clone must not share its parent's MAC");
    let (rc, out, err) = sh(
        &clone,
        &format!(
            "wget -q -O - http://host.nook.internal:{}/2 | sha256sum",
            server.port
        ),
    );
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with(&sha256(&body("/2"))));
    assert_eq!(clone.net_stats().unwrap().tcp_flows, 1, "its own back end");
    clone.stop().unwrap();
}
