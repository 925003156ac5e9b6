//! Boot words: what the host tells the agent on the kernel command line,
//! before any frame can flow (which disk is the image root, which volumes
//! and shares to mount where).
//!
//! The host builds a [`BootWords`] and appends [`BootWords::to_words`] to
//! the command line; the agent reads `/proc/cmdline` with
//! [`BootWords::parse`]. Free-text fields (serials, tags, paths) are
//! percent-encoded: every byte outside `[A-Za-z0-9/._-]` is written `%XX`,
//! so a field never holds a space, a quote or a `:` of its own, and any
//! string survives the trip.
//!
//! ```text
//! nook.root=nook-root nook.scratch=nook-scratch nook.mount=nook-vol0:/my%20data:rw
//! nook.share=nook0:/mnt/my%20data:ro nook.poweroff_after_init
//! nook.net=10.0.2.15/24,10.0.2.2,10.0.2.3,65520,02:4e:00:00:00:01
//! ```
//!
//! `docs/protocol.md` says what the agent does with each word.

use crate::net::NetBoot;

/// Prefix of every word nook owns; the agent refuses one it does not know.
pub const WORD_PREFIX: &str = "nook.";

/// Everything the host tells the agent on the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootWords {
    /// `nook.root=SERIAL`: boot into the image on the disk with this serial.
    pub root: Option<String>,
    /// `nook.scratch=SERIAL`: with `root`, the disk holding the writable layer.
    pub scratch: Option<String>,
    /// `nook.mount=SERIAL:PATH:MODE` (repeatable): ext4 volumes.
    pub mounts: Vec<DiskMount>,
    /// `nook.share=TAG:PATH:MODE` (repeatable): virtio-fs shares.
    pub shares: Vec<ShareMount>,
    /// `nook.poweroff_after_init`: power off as soon as init is done (for
    /// boot benchmarks).
    pub poweroff_after_init: bool,
    /// `nook.net=ADDR/PREFIX,GATEWAY,DNS,MTU,MAC`: configure the NIC with
    /// this MAC (see [`NetBoot`]); without it the guest has only `lo`.
    pub net: Option<NetBoot>,
}

/// An ext4 disk, found by its virtio-blk serial, mounted at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskMount {
    pub serial: String,
    /// Absolute path in the guest's final root.
    pub path: String,
    pub read_only: bool,
}

/// A virtio-fs device, found by its tag, mounted at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareMount {
    pub tag: String,
    /// Absolute path in the guest's final root.
    pub path: String,
    pub read_only: bool,
}

/// A `nook.` word the agent cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootWordError {
    #[error("unknown boot word `{0}`")]
    Unknown(String),
    #[error("bad boot word `{word}`: expected {expected}")]
    Malformed {
        word: String,
        expected: &'static str,
    },
    #[error("boot word `{word}`: the path must be absolute")]
    RelativePath { word: String },
    #[error("boot word `{word}` given twice")]
    Repeated { word: String },
}

const ROOT: &str = "nook.root=";
const SCRATCH: &str = "nook.scratch=";
const MOUNT: &str = "nook.mount=";
const SHARE: &str = "nook.share=";
const POWEROFF_AFTER_INIT: &str = "nook.poweroff_after_init";
const NET: &str = "nook.net=";

impl BootWords {
    /// The words, in a fixed order: root, scratch, mounts, shares, flags.
    pub fn to_words(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(serial) = &self.root {
            out.push(format!("{ROOT}{}", percent_encode(serial)));
        }
        if let Some(serial) = &self.scratch {
            out.push(format!("{SCRATCH}{}", percent_encode(serial)));
        }
        for m in &self.mounts {
            out.push(format!(
                "{MOUNT}{}",
                fields(&m.serial, &m.path, m.read_only)
            ));
        }
        for s in &self.shares {
            out.push(format!("{SHARE}{}", fields(&s.tag, &s.path, s.read_only)));
        }
        if self.poweroff_after_init {
            out.push(POWEROFF_AFTER_INIT.to_string());
        }
        if let Some(net) = &self.net {
            out.push(format!("{NET}{net}"));
        }
        out
    }

    /// The words joined by spaces, ready to append to a command line.
    pub fn to_cmdline(&self) -> String {
        self.to_words().join(" ")
    }

    /// Reads the `nook.` words of a whole kernel command line; other words
    /// are the kernel's and are skipped.
    pub fn parse(cmdline: &str) -> Result<BootWords, BootWordError> {
        let mut out = BootWords::default();
        for word in cmdline.split_whitespace() {
            if !word.starts_with(WORD_PREFIX) {
                continue;
            }
            if let Some(v) = word.strip_prefix(ROOT) {
                set_once(&mut out.root, word, v)?;
            } else if let Some(v) = word.strip_prefix(SCRATCH) {
                set_once(&mut out.scratch, word, v)?;
            } else if let Some(v) = word.strip_prefix(MOUNT) {
                let (serial, path, read_only) = parse_fields(word, v, "SERIAL:PATH:ro|rw")?;
                out.mounts.push(DiskMount {
                    serial,
                    path,
                    read_only,
                });
            } else if let Some(v) = word.strip_prefix(SHARE) {
                let (tag, path, read_only) = parse_fields(word, v, "TAG:PATH:ro|rw")?;
                out.shares.push(ShareMount {
                    tag,
                    path,
                    read_only,
                });
            } else if word == POWEROFF_AFTER_INIT {
                out.poweroff_after_init = true;
            } else if let Some(v) = word.strip_prefix(NET) {
                if out.net.is_some() {
                    return Err(BootWordError::Repeated {
                        word: word.to_string(),
                    });
                }
                let net = NetBoot::parse_value(v).map_err(|_| BootWordError::Malformed {
                    word: word.to_string(),
                    expected: "ADDR/PREFIX,GATEWAY,DNS,MTU,MAC",
                })?;
                out.net = Some(net);
            } else {
                return Err(BootWordError::Unknown(word.to_string()));
            }
        }
        Ok(out)
    }
}

fn fields(name: &str, path: &str, read_only: bool) -> String {
    format!(
        "{}:{}:{}",
        percent_encode(name),
        percent_encode(path),
        if read_only { "ro" } else { "rw" }
    )
}

fn set_once(slot: &mut Option<String>, word: &str, value: &str) -> Result<(), BootWordError> {
    if slot.is_some() {
        return Err(BootWordError::Repeated {
            word: word.to_string(),
        });
    }
    *slot = Some(decode_name(word, value, "a serial")?);
    Ok(())
}

/// A non-empty, well-encoded name (serial or tag).
fn decode_name(word: &str, value: &str, expected: &'static str) -> Result<String, BootWordError> {
    percent_decode(value)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| BootWordError::Malformed {
            word: word.to_string(),
            expected,
        })
}

/// `NAME:PATH:MODE`, each field percent-encoded.
fn parse_fields(
    word: &str,
    value: &str,
    expected: &'static str,
) -> Result<(String, String, bool), BootWordError> {
    let malformed = || BootWordError::Malformed {
        word: word.to_string(),
        expected,
    };
    let mut parts = value.split(':');
    let (Some(name), Some(path), Some(mode), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let read_only = match mode {
        "ro" => true,
        "rw" => false,
        _ => return Err(malformed()),
    };
    let name = decode_name(word, name, expected)?;
    let path = percent_decode(path).ok_or_else(malformed)?;
    if !path.starts_with('/') {
        return Err(BootWordError::RelativePath {
            word: word.to_string(),
        });
    }
    Ok((name, path, read_only))
}

/// Encodes every byte but `[A-Za-z0-9/._-]` as `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/._-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> BootWords {
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
                    path: "/my dir:x%\"".into(),
                    read_only: true,
                },
            ],
            shares: vec![ShareMount {
                tag: "nook0".into(),
                path: "/mnt/a b".into(),
                read_only: true,
            }],
            poweroff_after_init: true,
            net: Some(NetBoot {
                address: [10, 0, 2, 15].into(),
                prefix: 24,
                gateway: [10, 0, 2, 2].into(),
                dns: [10, 0, 2, 3].into(),
                mtu: 65520,
                mac: [2, 0x4e, 0, 0, 0, 1],
            }),
        }
    }

    #[test]
    fn words_are_the_documented_ones() {
        assert_eq!(
            sample().to_words(),
            [
                "nook.root=nook-root",
                "nook.scratch=nook-scratch",
                "nook.mount=nook-vol0:/data:rw",
                "nook.mount=nook-vol1:/my%20dir%3Ax%25%22:ro",
                "nook.share=nook0:/mnt/a%20b:ro",
                "nook.poweroff_after_init",
                "nook.net=10.0.2.15/24,10.0.2.2,10.0.2.3,65520,02:4e:00:00:00:01",
            ]
        );
        assert!(BootWords::default().to_words().is_empty());
    }

    #[test]
    fn parse_skips_kernel_words_and_reads_nook_words() {
        let line = format!(
            "console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:5 {} panic=-1",
            sample().to_cmdline()
        );
        assert_eq!(BootWords::parse(&line).unwrap(), sample());
        assert_eq!(
            BootWords::parse("console=ttyS0 quiet").unwrap(),
            BootWords::default()
        );
    }

    #[test]
    fn bad_words_are_refused() {
        for bad in [
            "nook.mount=x",
            "nook.mount=x:/a",
            "nook.mount=x:/a:rx",
            "nook.mount=x:rel:rw",
            "nook.mount=x:/a%2:rw",
            "nook.mount=x:/a%zz:rw",
            "nook.mount=x:/a%+1:rw",
            "nook.mount=:/a:rw",
            "nook.share=t:/p",
            "nook.share=t:/p:rx",
            "nook.share=t:rel:ro",
            "nook.share=:/p:ro",
            "nook.share=t:/p:ro:x",
            "nook.root=",
            "nook.root=a nook.root=b",
            "nook.scratch=%ff",
            "nook.rooot=x",
            "nook.poweroff_after_init=1",
        ] {
            assert!(BootWords::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a%25b%3a%3A").as_deref(), Some("/a%b::"));
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%4"), None);
    }

    fn name() -> impl Strategy<Value = String> {
        ".{1,24}"
    }

    fn path() -> impl Strategy<Value = String> {
        "/.{0,40}"
    }

    fn boot_words() -> impl Strategy<Value = BootWords> {
        let mount =
            (name(), path(), any::<bool>()).prop_map(|(serial, path, read_only)| DiskMount {
                serial,
                path,
                read_only,
            });
        let share = (name(), path(), any::<bool>()).prop_map(|(tag, path, read_only)| ShareMount {
            tag,
            path,
            read_only,
        });
        let net = (any::<[u8; 4]>(), 0u8..=32, any::<[u8; 6]>(), 68u16..).prop_map(
            |(ip, prefix, mac, mtu)| NetBoot {
                address: ip.into(),
                prefix,
                gateway: ip.into(),
                dns: ip.into(),
                mtu,
                mac,
            },
        );
        (
            proptest::option::of(name()),
            proptest::option::of(name()),
            proptest::collection::vec(mount, 0..4),
            proptest::collection::vec(share, 0..4),
            any::<bool>(),
            proptest::option::of(net),
        )
            .prop_map(
                |(root, scratch, mounts, shares, poweroff_after_init, net)| BootWords {
                    root,
                    scratch,
                    mounts,
                    shares,
                    poweroff_after_init,
                    net,
                },
            )
    }

    proptest! {
        #[test]
        fn boot_words_round_trip(words in boot_words()) {
            let line = words.to_cmdline();
            prop_assert!(line.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
            prop_assert_eq!(line.split(' ').filter(|w| !w.is_empty()).count(), words.to_words().len());
            prop_assert_eq!(BootWords::parse(&line).unwrap(), words);
        }

        #[test]
        fn parse_never_panics(line in ".{0,200}") {
            let _ = BootWords::parse(&line);
        }

        #[test]
        fn percent_encoding_round_trips(s in ".{0,64}") {
            let enc = percent_encode(&s);
            prop_assert!(enc.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-%".contains(&b)));
            prop_assert_eq!(percent_decode(&enc), Some(s));
        }
    }
}
