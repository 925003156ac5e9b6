//! `nook run`'s network options end to end (a real guest on the qemu
//! engine; loopback only). The library's tests cover the acceptance list
//! in depth (`crates/nook/tests/net.rs`); these check the flags reach it.

use std::io::{Read, Write};
use std::net::TcpListener;

mod common;
use common::{nook, ready, text};

/// Serves `reply` to every connection on 127.0.0.1 (HTTP/1.0).
fn serve(reply: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut req = [0u8; 1024];
            let _ = conn.read(&mut req);
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    port
}

#[test]
fn allow_and_add_host_flags_open_one_door_and_refusals_are_logged() {
    if !ready() {
        return;
    }
    let port = serve("through the door\n");
    let out = nook()
        .args([
            "run",
            "--add-host",
            "allowed.test:127.0.0.1",
            "--allow",
            &format!("allowed.test:{port}"),
            "--",
            "sh",
            "-c",
            &format!(
                "wget -q -O - http://allowed.test:{port}/; \
                 echo x | nc -w 3 192.0.2.1 80; echo nc=$?"
            ),
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("through the door\n"), "{stdout}");
    assert!(!stdout.contains("nc=0"), "{stdout}");
    assert!(
        stderr.contains("net: refused tcp to 192.0.2.1:80: no --allow rule covers it"),
        "{stderr}"
    );
}

#[test]
fn malformed_network_options_are_usage_errors() {
    for args in [
        ["--allow", "a..b"],
        ["-p", "80"],
        ["--add-host", "nohost"],
        ["--deny", "10.0.0.0/33"],
    ] {
        let out = nook()
            .arg("run")
            .args(args)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("invalid"),
            "{}",
            text(&out.stderr)
        );
    }
}
