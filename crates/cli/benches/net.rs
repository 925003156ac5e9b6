//! `cargo bench -p nook-cli --bench net`: nook's network back end beside
//! QEMU's own user networking (`-netdev user`, libslirp) and passt, on the
//! same guest (kernel, initramfs, QEMU machine) in the same run. Loopback
//! only: every server is on the host's 127.0.0.1, reached from the guest
//! as 10.0.2.2, which all three map to the host's loopback.
//!
//! The guest runs a shell script as init (no agent): it loads the
//! initramfs's modules, configures `eth0`, starts `httpd` on port 8000
//! and then drives the host's test server:
//!
//! - **host → guest**: `wget` of `NOOK_BENCH_NET_MIB` MiB (default 64) from
//!   the host; MB/s from the first request to the guest's "done" request;
//! - **guest → host**: `nc` sends the same amount to a host socket; MB/s
//!   from the first byte to the end of the stream, on the host (busybox
//!   1.35's `wget --post-file` sends an empty body);
//! - **guest connects**: 20 sequential `wget`s of an empty page; the mean
//!   interval between the host's accepts (a busybox process start in the
//!   guest included, the same for all three);
//! - **host connects**: 20 sequential connects from the host to the
//!   guest's httpd through each back end's port forward, until the first
//!   response byte (median);
//! - **memory**: peak resident memory: QEMU's, and the back end's where it
//!   is a process of its own (passt) or a thread of this one (nook: the
//!   growth of this process's RSS); libslirp lives inside QEMU, so its
//!   cost shows only in QEMU's column.
//!
//! Needs prepared assets (`scripts/setup`) and, for its row, `passt`
//! (Debian package; the row is skipped with a note when it is missing).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nook::{NetConfig, VmConfig};

/// What the host's test server saw.
#[derive(Debug, Default)]
struct Seen {
    down_start: Option<Instant>,
    down_end: Option<Instant>,
    done: Option<Instant>,
    up_secs: Option<f64>,
    connects: Vec<Instant>,
    ready: bool,
}

/// One back end's numbers.
#[derive(Debug, Default)]
struct Row {
    down_mbs: f64,
    up_mbs: f64,
    guest_connect_ms: f64,
    host_connect_ms: f64,
    qemu_rss_kib: u64,
    backend_rss_kib: Option<u64>,
}

fn mib() -> usize {
    std::env::var("NOOK_BENCH_NET_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

/// Serves the guest's requests until `/done`.
fn serve(listener: TcpListener, seen: Arc<Mutex<Seen>>, forward: Arc<Mutex<Option<u16>>>) {
    let bytes = mib() << 20;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let now = Instant::now();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut path = String::new();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
            if path.is_empty() {
                path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            }
            line.clear();
        }
        // The length of the body, sent in 64 KiB chunks so that this
        // process's RSS shows the back end, not the payload.
        let len: usize = match path.as_str() {
            "/ready" => {
                seen.lock().unwrap().ready = true;
                // Host-side connects through the forward, while the guest waits.
                if let Some(port) = *forward.lock().unwrap() {
                    let ms = host_connects(port);
                    HOST_CONNECT_MS.lock().unwrap().replace(ms);
                }
                0
            }
            "/down" => {
                seen.lock().unwrap().down_start = Some(now);
                bytes
            }
            "/c0" => {
                seen.lock().unwrap().down_end = Some(now);
                0
            }
            "/c" => {
                seen.lock().unwrap().connects.push(now);
                0
            }
            "/done" => {
                seen.lock().unwrap().done = Some(now);
                0
            }
            _ => 0,
        };
        let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\n\r\n");
        let chunk = [0x5au8; 1 << 16];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            if conn.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n;
        }
    }
}

static HOST_CONNECT_MS: Mutex<Option<f64>> = Mutex::new(None);

/// Median time of a connect + GET + first response byte through `port`.
fn host_connects(port: u16) -> f64 {
    let mut v = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /x HTTP/1.0\r\n\r\n");
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                v.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The guest's init script (no double quotes: it travels on the kernel
/// command line).
fn guest_script(port: u16, up_port: u16, mtu: u16) -> String {
    let host = format!("http://10.0.2.2:{port}");
    let n = mib();
    [
        "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp",
        "for m in $(cat /etc/nook/modules); do insmod $m; done",
        &format!("ip link set eth0 mtu {mtu} up; ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2"),
        "echo nook-bench: network up; ip -o addr show eth0",
        "mkdir -p /tmp/www; echo x > /tmp/www/x; httpd -p 8000 -h /tmp/www",
        &format!("until wget -q -O /dev/null {host}/ready; do sleep 0.2; done"),
        &format!("wget -q -O /dev/null {host}/down; wget -q -O /dev/null {host}/c0"),
        &format!("dd if=/dev/zero of=/tmp/up bs=1M count={n} 2>/dev/null; nc 10.0.2.2 {up_port} < /tmp/up; rm /tmp/up"),
        &format!("for i in $(seq 1 20); do wget -q -O /dev/null {host}/c; done"),
        &format!("wget -q -O /dev/null {host}/done; poweroff -f"),
    ]
    .join("; ")
}

/// The host's CPU frequency in kHz (`/proc/cpuinfo`), as the guest
/// kernel's early TSC hint under TCG.
fn host_tsc_khz() -> u64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(2_000_000, |mhz| (mhz * 1000.0) as u64)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The network of one run.
enum Backend {
    Nook,
    Slirp,
    Passt,
}

/// Boots the bench guest on `backend` and collects its row.
fn run(backend: &Backend, assets: &nook::Assets, dir: &Path) -> Option<Row> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_port = up.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    {
        // guest → host: one raw TCP upload, timed from its first byte to EOF.
        let seen = seen.clone();
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = up.accept() {
                let mut buf = vec![0u8; 1 << 16];
                let mut first = None;
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    first.get_or_insert_with(Instant::now);
                }
                seen.lock().unwrap().up_secs = first.map(|f| f.elapsed().as_secs_f64());
            }
        });
    }
    let forward = Arc::new(Mutex::new(None));
    HOST_CONNECT_MS.lock().unwrap().take();
    {
        let (seen, forward) = (seen.clone(), forward.clone());
        std::thread::spawn(move || serve(listener, seen, forward));
    }
    let mut qc = nook_qemu::QemuConfig::new(
        nook_qemu::locate_qemu().ok()?,
        nook_qemu::Accel::Tcg,
        &assets.kernel,
        dir,
    );
    qc.initrd = Some(assets.initramfs.clone());
    qc.memory_mib = 512;
    let rss_before = rss_kib(std::process::id());
    let mut link: Option<UnixStream> = None;
    let mut nook_net = None;
    let mut passt: Option<Child> = None;
    let mtu = match backend {
        Backend::Slirp => 1500,
        _ => 65520,
    };
    // The script's words follow `--`, where nook_qemu would append its
    // TSC hint: give the kernel one here, before them.
    qc.tsc_hint = false;
    qc.cmdline = format!(
        "console=ttyS0 quiet panic=-1 tsc_early_khz={} rdinit=/bin/sh -- -c \"{}\"",
        host_tsc_khz(),
        guest_script(port, up_port, mtu)
    );
    let fwd = free_port();
    match backend {
        Backend::Nook => {
            let mut cfg = NetConfig::default();
            cfg.publish
                .push(format!("127.0.0.1:{fwd}:8000").parse().unwrap());
            cfg.allow
                .push(format!("host.nook.internal:{port}").parse().unwrap());
            cfg.allow
                .push(format!("host.nook.internal:{up_port}").parse().unwrap());
            let (b, l) = nook_net::NetBackend::start(&cfg, nook_net::MacAddr::random()).ok()?;
            nook_net = Some(b);
            link = Some(l);
            qc.nic = Some(nook_qemu::QemuNicConfig {
                mac: "02:4e:00:00:00:01".into(),
            });
        }
        Backend::Slirp => {
            qc.extra_args = vec![
                "-netdev".into(),
                format!("user,id=n0,hostfwd=tcp:127.0.0.1:{fwd}-:8000"),
                "-device".into(),
                "virtio-net-device,netdev=n0".into(),
            ];
        }
        Backend::Passt => {
            let (ours, theirs) = UnixStream::pair().ok()?;
            let child = Command::new("passt")
                .args(["-f", "-q", "-1", "-F", "0", "-a", "10.0.2.15", "-n", "24"])
                .args(["-g", "10.0.2.2", "-t", &format!("{fwd}:8000")])
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let Ok(child) = child else {
                println!("passt: not installed (Debian package `passt`): row skipped");
                return None;
            };
            passt = Some(child);
            link = Some(ours);
            qc.nic = Some(nook_qemu::QemuNicConfig {
                mac: "02:4e:00:00:00:01".into(),
            });
        }
    }
    *forward.lock().unwrap() = Some(fwd);
    // QEMU's own user networking (slirp) binds and connects TCP sockets,
    // which the Landlock domain nook gives QEMU refuses: that row runs
    // QEMU unconfined (nook's NIC is a socket pair and needs no TCP).
    let confine = nook_seccomp::confine_enabled();
    nook_seccomp::set_confine_enabled(confine && !matches!(backend, Backend::Slirp));
    let vm = nook_qemu::QemuVm::start_with_net(qc, link.as_ref().map(|l| l.as_fd()));
    nook_seccomp::set_confine_enabled(confine);
    let mut vm = vm.ok()?;
    drop(link);
    let (mut qemu_rss, mut passt_rss, mut nook_rss) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(600);
    while vm.try_wait().ok()?.is_none() && Instant::now() < deadline {
        qemu_rss = qemu_rss.max(rss_kib(vm.pid()));
        passt_rss = passt_rss.max(passt.as_ref().map_or(0, |p| rss_kib(p.id())));
        nook_rss = nook_rss.max(rss_kib(std::process::id()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = seen.lock().unwrap();
    if s.done.is_none() {
        println!("guest did not finish:\n{}", vm.console_tail(20));
        return None;
    }
    let n = (mib() << 20) as f64 / 1e6;
    let c = &s.connects;
    let down = s.down_end.zip(s.down_start);
    let backend_rss = match backend {
        Backend::Nook => Some(nook_rss.saturating_sub(rss_before)),
        Backend::Passt => Some(passt_rss),
        Backend::Slirp => None,
    };
    drop(nook_net);
    if let Some(mut p) = passt {
        let _ = p.kill();
        let _ = p.wait();
    }
    Some(Row {
        down_mbs: down.map_or(f64::NAN, |(end, start)| n / (end - start).as_secs_f64()),
        up_mbs: s.up_secs.map_or(f64::NAN, |t| n / t),
        guest_connect_ms: if c.len() > 1 {
            (c[c.len() - 1] - c[0]).as_secs_f64() * 1000.0 / (c.len() - 1) as f64
        } else {
            f64::NAN
        },
        host_connect_ms: HOST_CONNECT_MS.lock().unwrap().unwrap_or(f64::NAN),
        qemu_rss_kib: qemu_rss,
        backend_rss_kib: backend_rss,
    })
}

fn main() {
    let cfg = VmConfig {
        progress: false,
        net: Some(NetConfig::default()),
        ..VmConfig::default()
    };
    let assets = match nook::prepare_assets(&cfg, false) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: cannot prepare assets ({e}); run scripts/setup first");
            std::process::exit(1);
        }
    };
    println!(
        "kernel {}, qemu tcg, {} MiB each way\n",
        assets.kernel_release,
        mib()
    );
    let dir = std::env::temp_dir().join(format!("nook-bench-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rows = Vec::new();
    for (name, b) in [
        ("nook (smoltcp NAT)", Backend::Nook),
        ("qemu -netdev user (libslirp)", Backend::Slirp),
        ("passt", Backend::Passt),
    ] {
        if let Some(r) = run(&b, &assets, &dir) {
            rows.push((name, b, r));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{:<30} {:>5} {:>12} {:>12} {:>14} {:>14} {:>12} {:>14}",
        "back end",
        "mtu",
        "host→guest",
        "guest→host",
        "guest connect",
        "host connect",
        "QEMU RSS",
        "back-end RSS"
    );
    println!(
        "{:<30} {:>5} {:>12} {:>12} {:>14} {:>14} {:>12} {:>14}",
        "", "", "MB/s", "MB/s", "ms (mean)", "ms (median)", "MiB", "MiB"
    );
    for (name, b, r) in &rows {
        let backend = r.backend_rss_kib;
        println!(
            "{:<30} {:>5} {:>12.1} {:>12.1} {:>14.1} {:>14.2} {:>12.1} {:>14}",
            name,
            if matches!(b, Backend::Slirp) {
                1500
            } else {
                65520
            },
            r.down_mbs,
            r.up_mbs,
            r.guest_connect_ms,
            r.host_connect_ms,
            r.qemu_rss_kib as f64 / 1024.0,
            backend.map_or("in QEMU".to_string(), |k| format!(
                "{:.1}",
                k as f64 / 1024.0
            )),
        );
    }
}
