//! Frozen wire schema: every message kind, encoded, and the kernel
//! command-line boot words must match the golden file byte for byte. A
//! change here is a wire change: additions (a new kind, a new optional
//! field, a new boot word) are re-blessed with `NOOK_BLESS=1 cargo test -p
//! nook-proto`; a changed encoding of an existing message also bumps
//! `PROTOCOL_VERSION`.

use nook_proto::*;

fn samples() -> Vec<(&'static str, Frame)> {
    let mut all = stream_samples();
    all.extend(file_samples());
    all.extend(desktop_samples());
    all
}

/// Samples of the desktop messages.
fn desktop_samples() -> Vec<(&'static str, Frame)> {
    vec![
        (
            "guest_hello_features",
            GuestMsg::Hello(GuestHello {
                protocol: PROTOCOL_VERSION,
                agent_version: "0.1.0".into(),
                kernel_release: "6.1.0".into(),
                features: vec![FEATURE_DESKTOP.into()],
            })
            .to_frame(CONTROL_STREAM),
        ),
        (
            "desktop_screenshot",
            HostMsg::Desktop(DesktopRequest {
                action: DesktopAction::Screenshot,
                display: Some(":0".into()),
                max_image_size: Some([1024, 768]),
                settle_ms: Some(500),
            })
            .to_frame(6),
        ),
        (
            "desktop_scroll",
            HostMsg::Desktop(DesktopRequest::new(DesktopAction::Scroll {
                coordinate: Some([10, 20]),
                scroll_direction: ScrollDirection::Down,
                scroll_amount: 3,
                text: Some("shift".into()),
            }))
            .to_frame(6),
        ),
        (
            "desktop_hold_key",
            HostMsg::Desktop(DesktopRequest::new(DesktopAction::HoldKey {
                text: "ctrl".into(),
                duration: 0.5,
            }))
            .to_frame(6),
        ),
        (
            "desktop_image",
            GuestMsg::DesktopImage(vec![0x89, b'P', b'N', b'G']).to_frame(6),
        ),
        (
            "desktop_done_image",
            GuestMsg::DesktopDone(DesktopReply {
                screen: [1280, 800],
                result: DesktopResult::Image {
                    width: 1024,
                    height: 640,
                    bytes: 4,
                },
            })
            .to_frame(6),
        ),
        (
            "desktop_done_position",
            GuestMsg::DesktopDone(DesktopReply {
                screen: [1280, 800],
                result: DesktopResult::Position { x: 5, y: 6 },
            })
            .to_frame(6),
        ),
        (
            "desktop_done",
            GuestMsg::DesktopDone(DesktopReply {
                screen: [1280, 800],
                result: DesktopResult::Done,
            })
            .to_frame(6),
        ),
    ]
}

/// Samples of the handshake, exec, stdio and control messages.
fn stream_samples() -> Vec<(&'static str, Frame)> {
    vec![
        (
            "guest_hello",
            GuestMsg::Hello(GuestHello {
                protocol: PROTOCOL_VERSION,
                agent_version: "0.1.0".into(),
                kernel_release: "6.1.0".into(),
                features: Vec::new(),
            })
            .to_frame(CONTROL_STREAM),
        ),
        (
            "host_hello",
            HostMsg::Hello(HostHello {
                protocol: PROTOCOL_VERSION,
                time_ns: Some(1_700_000_000_000_000_000),
            })
            .to_frame(CONTROL_STREAM),
        ),
        (
            "exec",
            HostMsg::Exec(ExecRequest {
                argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec![("FOO".into(), "bar".into())],
                cwd: Some("/tmp".into()),
                stdin: true,
                tty: Some(Winsize { rows: 24, cols: 80 }),
                timeout_ms: Some(3000),
                user: None,
            })
            .to_frame(1),
        ),
        (
            "exec_user",
            HostMsg::Exec(ExecRequest {
                argv: vec!["id".into()],
                user: Some("app:staff".into()),
                ..Default::default()
            })
            .to_frame(3),
        ),
        (
            "started",
            GuestMsg::Started(Started { pid: 42 }).to_frame(1),
        ),
        ("stdin", HostMsg::Stdin(vec![0, 1, 2, 255]).to_frame(1)),
        ("stdin_eof", HostMsg::Stdin(vec![]).to_frame(1)),
        ("stdout", GuestMsg::Stdout(b"out\n".to_vec()).to_frame(1)),
        ("stderr", GuestMsg::Stderr(b"err\n".to_vec()).to_frame(1)),
        (
            "exit",
            GuestMsg::Exit(Exited {
                code: Some(7),
                signal: None,
                timed_out: false,
            })
            .to_frame(1),
        ),
        (
            "error",
            GuestMsg::Error(ErrorReply {
                code: ErrorCode::NotFound,
                message: "no such file".into(),
            })
            .to_frame(2),
        ),
        ("signal", HostMsg::Signal(15).to_frame(1)),
        (
            "resize",
            HostMsg::Resize(Winsize {
                rows: 50,
                cols: 132,
            })
            .to_frame(1),
        ),
        ("shutdown", HostMsg::Shutdown.to_frame(CONTROL_STREAM)),
        (
            "resync",
            HostMsg::Resync(Resync {
                time_ns: 1_700_000_000_000_000_000,
                entropy: vec![1, 2, 3, 4],
                mac: None,
            })
            .to_frame(CONTROL_STREAM),
        ),
        (
            "credit_stdout",
            HostMsg::Credit(Credit {
                pipe: Pipe::Stdout,
                bytes: CREDIT_BATCH,
            })
            .to_frame(1),
        ),
        (
            "credit_stdin",
            GuestMsg::Credit(Credit {
                pipe: Pipe::Stdin,
                bytes: 4096,
            })
            .to_frame(1),
        ),
        (
            "pipe_closed_stdout",
            HostMsg::PipeClosed(PipeClosed { pipe: Pipe::Stdout }).to_frame(1),
        ),
        (
            "pipe_closed_stdin",
            GuestMsg::PipeClosed(PipeClosed { pipe: Pipe::Stdin }).to_frame(1),
        ),
    ]
}

/// Samples of the file-operation messages.
fn file_samples() -> Vec<(&'static str, Frame)> {
    vec![
        (
            "file_write",
            HostMsg::File(FileRequest::Write {
                path: "/tmp/a b".into(),
                mode: 0o644,
            })
            .to_frame(4),
        ),
        ("file_chunk", HostMsg::FileChunk(vec![0, 255]).to_frame(4)),
        (
            "file_read",
            HostMsg::File(FileRequest::Read {
                path: "/etc/x".into(),
                offset: 5,
                len: 1024,
            })
            .to_frame(5),
        ),
        (
            "file_stat",
            HostMsg::File(FileRequest::Stat { path: "/".into() }).to_frame(5),
        ),
        (
            "file_list",
            HostMsg::File(FileRequest::List { path: "/".into() }).to_frame(5),
        ),
        (
            "file_mkdir",
            HostMsg::File(FileRequest::Mkdir {
                path: "/a/b".into(),
                mode: 0o755,
            })
            .to_frame(5),
        ),
        (
            "file_remove",
            HostMsg::File(FileRequest::Remove {
                path: "/a".into(),
                recursive: true,
            })
            .to_frame(5),
        ),
        (
            "file_symlink",
            HostMsg::File(FileRequest::Symlink {
                target: "../t".into(),
                path: "/a/l".into(),
            })
            .to_frame(5),
        ),
        (
            "file_content",
            GuestMsg::FileContent(b"abc".to_vec()).to_frame(5),
        ),
        (
            "file_done_ok",
            GuestMsg::FileDone(FileReply::Ok).to_frame(4),
        ),
        (
            "file_done_read",
            GuestMsg::FileDone(FileReply::Read { size: 10, sent: 3 }).to_frame(5),
        ),
        (
            "file_done_list",
            GuestMsg::FileDone(FileReply::List {
                entries: vec![
                    FileStat {
                        name: "f".into(),
                        kind: FileKind::File,
                        size: 3,
                        mode: 0o644,
                        mtime: 1_700_000_000,
                        link_target: None,
                    },
                    FileStat {
                        name: "l".into(),
                        kind: FileKind::Symlink,
                        size: 1,
                        mode: 0o777,
                        mtime: 0,
                        link_target: Some("f".into()),
                    },
                ],
                truncated: false,
            })
            .to_frame(5),
        ),
        (
            "error_not_a_directory",
            GuestMsg::Error(ErrorReply {
                code: ErrorCode::NotADirectory,
                message: "m".into(),
            })
            .to_frame(5),
        ),
    ]
}

/// Kernel command-line words the host writes and the agent reads.
fn boot_word_samples() -> Vec<(&'static str, BootWords)> {
    vec![
        ("boot_none", BootWords::default()),
        (
            "boot_all",
            BootWords {
                root: Some("nook-root".into()),
                scratch: Some("nook-scratch".into()),
                mounts: vec![
                    DiskMount {
                        serial: "nook-vol0".into(),
                        path: "/data".into(),
                        read_only: false,
                    },
                    DiskMount {
                        serial: "nook-vol1".into(),
                        path: "/my data:1".into(),
                        read_only: true,
                    },
                ],
                shares: vec![ShareMount {
                    tag: "nook0".into(),
                    path: "/mnt/my data".into(),
                    read_only: true,
                }],
                poweroff_after_init: true,
                net: Some(nook_proto::NetBoot {
                    address: [10, 0, 2, 15].into(),
                    prefix: 24,
                    gateway: [10, 0, 2, 2].into(),
                    dns: [10, 0, 2, 3].into(),
                    mtu: 1500,
                    mac: [2, 0x4e, 0, 0, 0, 1],
                }),
            },
        ),
    ]
}

fn render() -> String {
    let mut out = format!("protocol {PROTOCOL_VERSION}\n");
    for (name, frame) in samples() {
        let bytes = frame.encode().expect("sample frames are small");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        out.push_str(&format!("{name} {hex}\n"));
    }
    for (name, words) in boot_word_samples() {
        out.push_str(&format!("{name} [{}]\n", words.to_cmdline()));
    }
    out
}

#[test]
fn wire_schema_is_frozen() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schema.golden");
    let now = render();
    if std::env::var_os("NOOK_BLESS").is_some() {
        std::fs::write(path, &now).expect("write golden file");
        return;
    }
    let golden = std::fs::read_to_string(path).expect("tests/schema.golden exists");
    assert_eq!(
        golden, now,
        "the wire format changed: a new kind or optional field needs only a re-bless (NOOK_BLESS=1); a change to an existing encoding also needs a PROTOCOL_VERSION bump"
    );
}

#[test]
fn golden_boot_words_parse_back_to_the_samples() {
    for (name, words) in boot_word_samples() {
        assert_eq!(
            BootWords::parse(&words.to_cmdline()).unwrap(),
            words,
            "{name}"
        );
    }
}

#[test]
fn golden_frames_decode_back_to_the_samples() {
    for (name, frame) in samples() {
        let bytes = frame.encode().unwrap();
        let back = read_frame(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(back, frame, "{name}");
        let ok = GuestMsg::from_frame(&back).is_ok() || HostMsg::from_frame(&back).is_ok();
        assert!(ok, "{name} decodes as a message");
    }
}
