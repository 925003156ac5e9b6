//! Loading the kernel modules the initramfs carries.
//!
//! `/etc/nook/modules` lists module files in dependency order. Parameters
//! come from the kernel command line as `module.param=value`, as modprobe
//! does for loadable modules (`virtio_mmio.device=...` needs this).

use std::fs::File;
use std::path::Path;

use nix::kmod::{finit_module, ModuleInitFlags};

use crate::log;

pub const MANIFEST: &str = "/etc/nook/modules";

/// Loads every module in the manifest; a module that is already present
/// (built in, or loaded) is fine; other failures are logged and skipped so
/// that the host sees a precise error later rather than a dead guest.
pub fn load_manifest(manifest: &str, cmdline: &str) {
    let Ok(list) = std::fs::read_to_string(manifest) else {
        return;
    };
    for path in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = module_name(path);
        let params = params_for(&name, cmdline);
        if let Err(e) = load(path, &params) {
            log(&format!("cannot load module {path}: {e}"));
        }
    }
}

fn load(path: &str, params: &str) -> Result<(), nix::Error> {
    let file = File::open(path)
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let params = std::ffi::CString::new(params).map_err(|_| nix::Error::EINVAL)?;
    match finit_module(&file, &params, ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `/lib/modules/x/virtio-mmio.ko` -> `virtio_mmio`.
fn module_name(path: &str) -> String {
    let file = Path::new(path)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Collects `name.param=value` words of the command line into the
/// space-separated parameter string `finit_module` takes.
fn params_for(name: &str, cmdline: &str) -> String {
    let mut out = Vec::new();
    for word in split_cmdline(cmdline) {
        let Some((module, param)) = word.split_once('.') else {
            continue;
        };
        if module.replace('-', "_") == name && !param.is_empty() && !param.starts_with('=') {
            out.push(param.to_string());
        }
    }
    out.join(" ")
}

/// Splits a kernel command line into words, honouring double quotes.
fn split_cmdline(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_normalise_dashes_and_suffixes() {
        assert_eq!(
            module_name("/lib/modules/6.1/virtio-mmio.ko"),
            "virtio_mmio"
        );
        assert_eq!(module_name("virtio_console.ko.xz"), "virtio_console");
    }

    #[test]
    fn params_come_from_the_command_line() {
        let cmd = "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio-mmio.device=4K@0xd0001000:6 quiet foo.bar=1 x.=2";
        assert_eq!(
            params_for("virtio_mmio", cmd),
            "device=4K@0xd0000000:5 device=4K@0xd0001000:6"
        );
        assert_eq!(params_for("virtio_console", cmd), "");
        assert_eq!(params_for("x", cmd), "");
    }

    #[test]
    fn quoted_values_stay_one_word() {
        assert_eq!(
            split_cmdline(r#"a=1 m.p="x y" b"#),
            vec!["a=1", r#"m.p="x y""#, "b"]
        );
    }
}
