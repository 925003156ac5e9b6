//! Just enough ELF to read a kernel module's `.modinfo` section: the
//! NUL-separated `key=value` strings (`name=`, `depends=`, `softdep=`, ...)
//! that `modinfo` prints. Every offset is bounds-checked: module files are
//! untrusted input.

/// Errors of the `.modinfo` reader.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ModinfoError {
    /// Not an ELF file at all.
    #[error("not an ELF file (bad magic)")]
    NotElf,
    /// An ELF class or byte order we do not read.
    #[error("unsupported ELF class {class} / data encoding {data}: only 64-bit ELF is read")]
    Unsupported {
        /// `EI_CLASS`.
        class: u8,
        /// `EI_DATA`.
        data: u8,
    },
    /// A header or section points outside the file.
    #[error("truncated or malformed ELF: {what} is out of bounds")]
    Malformed {
        /// Which structure was out of bounds.
        what: &'static str,
    },
    /// The file has no `.modinfo` section.
    #[error("no .modinfo section: not a kernel module")]
    NoModinfo,
}

/// The parsed `.modinfo` of one module.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Modinfo {
    /// `name=`, present in modules of Linux 5.x and later.
    pub name: Option<String>,
    /// `depends=`, split on commas, empty entries dropped.
    pub depends: Vec<String>,
}

/// Reads `.modinfo` from the bytes of an (uncompressed) `.ko` file.
pub fn read_modinfo(elf: &[u8]) -> Result<Modinfo, ModinfoError> {
    let section = modinfo_section(elf)?;
    let mut info = Modinfo::default();
    for entry in section.split(|&b| b == 0) {
        let Ok(entry) = std::str::from_utf8(entry) else {
            continue;
        };
        if let Some(name) = entry.strip_prefix("name=") {
            info.name = Some(name.to_owned());
        } else if let Some(deps) = entry.strip_prefix("depends=") {
            info.depends = deps
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect();
        }
    }
    Ok(info)
}

/// The program interpreter (`PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`)
/// an ELF executable asks for: `None` for a statically linked one. Only a
/// static executable can be a guest's `/init`, where no loader or libc
/// exists.
pub fn program_interpreter(elf: &[u8]) -> Result<Option<String>, ModinfoError> {
    let r = elf64(elf)?;
    let phoff = r.uint::<8>(E_PHOFF, "ELF header")?;
    let phentsize = r.uint::<2>(E_PHENTSIZE, "ELF header")?;
    let phnum = r.uint::<2>(E_PHNUM, "ELF header")?;
    if phnum > 0 && phentsize < MIN_PHENTSIZE {
        return Err(ModinfoError::Malformed {
            what: "program header size",
        });
    }
    for i in 0..phnum {
        let hdr = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or(ModinfoError::Malformed {
                what: "program header table",
            })?;
        if r.uint::<4>(hdr + P_TYPE, "program header")? != PT_INTERP {
            continue;
        }
        let path = r.bytes(
            r.uint::<8>(hdr + P_OFFSET, "program header")?,
            r.uint::<8>(hdr + P_FILESZ, "program header")?,
            "interpreter path",
        )?;
        let path = path.split(|&b| b == 0).next().unwrap_or_default();
        return Ok(Some(String::from_utf8_lossy(path).into_owned()));
    }
    Ok(None)
}

/// Why `elf` cannot run as a guest's `/init`: a dynamically linked ELF
/// asks for a loader and libc the initramfs does not have. (Anything else,
/// a static ELF or a `#!/bin/sh` script run by the initramfs's busybox, is
/// not refused here.)
pub fn dynamic_executable_problem(elf: &[u8]) -> Option<String> {
    match program_interpreter(elf) {
        Ok(Some(interp)) => Some(format!(
            "it is dynamically linked and asks for the loader {interp}"
        )),
        Ok(None) | Err(_) => None,
    }
}

/// A reader over a 64-bit ELF file (checked magic and class).
fn elf64(buf: &[u8]) -> Result<Reader<'_>, ModinfoError> {
    if buf.len() < 16 || &buf[..4] != b"\x7fELF" {
        return Err(ModinfoError::NotElf);
    }
    let (class, data) = (buf[4], buf[5]);
    if class != 2 || !(data == 1 || data == 2) {
        return Err(ModinfoError::Unsupported { class, data });
    }
    Ok(Reader {
        buf,
        big_endian: data == 2,
    })
}

#[derive(Clone, Copy)]
struct Reader<'a> {
    buf: &'a [u8],
    big_endian: bool,
}

impl<'a> Reader<'a> {
    fn bytes(&self, at: u64, len: u64, what: &'static str) -> Result<&'a [u8], ModinfoError> {
        let bad = ModinfoError::Malformed { what };
        let start = usize::try_from(at).map_err(|_| bad.clone())?;
        let len = usize::try_from(len).map_err(|_| bad.clone())?;
        let end = start.checked_add(len).ok_or(bad.clone())?;
        self.buf.get(start..end).ok_or(bad)
    }

    fn uint<const N: usize>(&self, at: u64, what: &'static str) -> Result<u64, ModinfoError> {
        let b = self.bytes(at, N as u64, what)?;
        let mut v = 0u64;
        for i in 0..N {
            let byte = if self.big_endian { b[i] } else { b[N - 1 - i] };
            v = (v << 8) | u64::from(byte);
        }
        Ok(v)
    }
}

/// ELF64 header offsets.
const E_PHOFF: u64 = 0x20;
const E_PHENTSIZE: u64 = 0x36;
const E_PHNUM: u64 = 0x38;
const E_SHOFF: u64 = 0x28;
const E_SHENTSIZE: u64 = 0x3A;
const E_SHNUM: u64 = 0x3C;
const E_SHSTRNDX: u64 = 0x3E;
/// ELF64 section header offsets.
const SH_NAME: u64 = 0x00;
const SH_OFFSET: u64 = 0x18;
const SH_SIZE: u64 = 0x20;
const SH_TYPE: u64 = 0x04;
const SHT_NOBITS: u64 = 8;
const MIN_SHENTSIZE: u64 = 0x40;
/// ELF64 program header offsets.
const P_TYPE: u64 = 0x00;
const P_OFFSET: u64 = 0x08;
const P_FILESZ: u64 = 0x20;
const PT_INTERP: u64 = 3;
const MIN_PHENTSIZE: u64 = 0x38;

fn modinfo_section(buf: &[u8]) -> Result<&[u8], ModinfoError> {
    let r = elf64(buf)?;
    let shoff = r.uint::<8>(E_SHOFF, "ELF header")?;
    let shentsize = r.uint::<2>(E_SHENTSIZE, "ELF header")?;
    let shnum = r.uint::<2>(E_SHNUM, "ELF header")?;
    let shstrndx = r.uint::<2>(E_SHSTRNDX, "ELF header")?;
    if shentsize < MIN_SHENTSIZE {
        return Err(ModinfoError::Malformed {
            what: "section header size",
        });
    }
    let header = |i: u64| -> Result<u64, ModinfoError> {
        let off = i
            .checked_mul(shentsize)
            .and_then(|o| o.checked_add(shoff))
            .ok_or(ModinfoError::Malformed {
                what: "section header table",
            })?;
        r.bytes(off, shentsize, "section header table")?;
        Ok(off)
    };
    let strtab_hdr = header(shstrndx)?;
    let strtab = r.bytes(
        r.uint::<8>(strtab_hdr + SH_OFFSET, "section header")?,
        r.uint::<8>(strtab_hdr + SH_SIZE, "section header")?,
        "section name table",
    )?;
    for i in 0..shnum {
        let hdr = header(i)?;
        let name_off = r.uint::<4>(hdr + SH_NAME, "section header")?;
        let name = usize::try_from(name_off)
            .ok()
            .and_then(|o| strtab.get(o..))
            .and_then(|s| s.split(|&b| b == 0).next())
            .ok_or(ModinfoError::Malformed {
                what: "section name",
            })?;
        if name != b".modinfo" {
            continue;
        }
        if r.uint::<4>(hdr + SH_TYPE, "section header")? == SHT_NOBITS {
            return Ok(&[]);
        }
        return r.bytes(
            r.uint::<8>(hdr + SH_OFFSET, "section header")?,
            r.uint::<8>(hdr + SH_SIZE, "section header")?,
            ".modinfo section",
        );
    }
    Err(ModinfoError::NoModinfo)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal little- or big-endian ELF64 relocatable file with a
    /// section name table and the given sections.
    pub(crate) fn fake_elf(sections: &[(&str, &[u8])], big_endian: bool) -> Vec<u8> {
        let put = |v: u64, n: usize| -> Vec<u8> {
            let le = v.to_le_bytes();
            let mut b = le[..n].to_vec();
            if big_endian {
                b.reverse();
            }
            b
        };
        // Section name table: "\0.shstrtab\0name1\0...".
        let mut shstrtab = vec![0u8];
        let mut name_offs = Vec::new();
        for (name, _) in sections {
            name_offs.push(shstrtab.len() as u64);
            shstrtab.extend_from_slice(name.as_bytes());
            shstrtab.push(0);
        }
        let strtab_name = shstrtab.len() as u64;
        shstrtab.extend_from_slice(b".shstrtab\0");

        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = if big_endian { 2 } else { 1 };
        out[6] = 1;
        // Section contents follow the header.
        let mut offsets = Vec::new();
        for (_, data) in sections {
            offsets.push(out.len() as u64);
            out.extend_from_slice(data);
        }
        let strtab_off = out.len() as u64;
        out.extend_from_slice(&shstrtab);
        while out.len() % 8 != 0 {
            out.push(0);
        }
        let shoff = out.len() as u64;
        // Null section header, then ours, then the name table.
        out.extend_from_slice(&[0u8; 64]);
        let mut shdr = |name: u64, ty: u64, off: u64, size: u64| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&put(name, 4));
            h[4..8].copy_from_slice(&put(ty, 4));
            h[0x18..0x20].copy_from_slice(&put(off, 8));
            h[0x20..0x28].copy_from_slice(&put(size, 8));
            out.extend_from_slice(&h);
        };
        for (i, (_, data)) in sections.iter().enumerate() {
            shdr(name_offs[i], 1, offsets[i], data.len() as u64);
        }
        shdr(strtab_name, 3, strtab_off, shstrtab.len() as u64);
        let shnum = sections.len() as u64 + 2;
        out[0x28..0x30].copy_from_slice(&put(shoff, 8));
        out[0x3A..0x3C].copy_from_slice(&put(64, 2));
        out[0x3C..0x3E].copy_from_slice(&put(shnum, 2));
        out[0x3E..0x40].copy_from_slice(&put(shnum - 1, 2));
        out
    }

    /// A fake module whose `.modinfo` names it and its dependencies.
    pub(crate) fn fake_module(name: &str, depends: &[&str]) -> Vec<u8> {
        let modinfo = format!(
            "license=GPL\0depends={}\0retpoline=Y\0name={name}\0vermagic=6.1.0 SMP\0",
            depends.join(",")
        );
        fake_elf(
            &[(".text", b"\x90\x90"), (".modinfo", modinfo.as_bytes())],
            false,
        )
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = read_modinfo(&bytes);
            let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
            elf.extend_from_slice(&bytes);
            let _ = read_modinfo(&elf);
            let _ = program_interpreter(&elf);
        }

        #[test]
        fn mutated_modules_never_panic(at in 0usize..400, value in proptest::prelude::any::<u8>()) {
            let mut elf = fake_module("virtio_ring", &["virtio"]);
            let at = at % elf.len();
            elf[at] = value;
            let _ = read_modinfo(&elf);
        }
    }

    #[test]
    fn a_dynamic_executable_names_its_interpreter_and_a_static_one_has_none() {
        // The host's own binaries: a dynamically linked `ls`, and the static
        // busybox that setup installs (busybox-static).
        let ls = std::fs::read("/bin/ls").unwrap();
        let interp = program_interpreter(&ls).unwrap().expect("ls is dynamic");
        assert!(interp.contains("ld-linux"), "{interp}");
        match std::fs::read(crate::DEFAULT_BUSYBOX) {
            Ok(busybox) => assert_eq!(program_interpreter(&busybox).unwrap(), None),
            Err(e) => eprintln!("skipping the static half: {}: {e}", crate::DEFAULT_BUSYBOX),
        }
        // A relocatable object has no program headers at all: not dynamic.
        assert_eq!(program_interpreter(&fake_module("m", &[])).unwrap(), None);
        assert_eq!(
            program_interpreter(b"#!/bin/sh\n"),
            Err(ModinfoError::NotElf)
        );
    }

    #[test]
    fn reads_name_and_depends() {
        let elf = fake_module("virtio_mmio", &["virtio", "virtio_ring"]);
        let info = read_modinfo(&elf).unwrap();
        assert_eq!(info.name.as_deref(), Some("virtio_mmio"));
        assert_eq!(info.depends, ["virtio", "virtio_ring"]);
    }

    #[test]
    fn empty_depends_and_big_endian() {
        let modinfo = b"depends=\0name=virtio\0";
        let elf = fake_elf(&[(".modinfo", modinfo)], true);
        let info = read_modinfo(&elf).unwrap();
        assert_eq!(info.name.as_deref(), Some("virtio"));
        assert!(info.depends.is_empty());
    }

    #[test]
    fn missing_section_and_garbage_are_errors_not_panics() {
        let elf = fake_elf(&[(".text", b"abc")], false);
        assert_eq!(read_modinfo(&elf), Err(ModinfoError::NoModinfo));
        assert_eq!(read_modinfo(b"hello"), Err(ModinfoError::NotElf));
        let mut elf32 = fake_module("x", &[]);
        elf32[4] = 1;
        assert!(matches!(
            read_modinfo(&elf32),
            Err(ModinfoError::Unsupported { .. })
        ));
        // Every truncation of a valid module fails cleanly.
        let elf = fake_module("virtio_ring", &["virtio"]);
        for len in 0..elf.len() {
            let _ = read_modinfo(&elf[..len]);
        }
        // Corrupt every byte of the header region in turn: no panics.
        for i in 0..64 {
            let mut bad = elf.clone();
            bad[i] ^= 0xFF;
            let _ = read_modinfo(&bad);
        }
    }
}
