//! The Rust toolchain image: Debian bookworm with Debian's `cargo` and
//! `rustc`, a C linker and the tools a build reaches for. Dev shells and
//! sidecar sessions boot it when a workspace is a Rust project and no image
//! was chosen. Built once with nook's Debian image builder and cached by
//! recipe in the image store: a change of recipe builds it again, and two
//! processes asking at once build it once (the store's build lock).

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use crate::error::SessionError;

/// The name the toolchain image is stored under.
pub const RUST_IMAGE: &str = "nook-rust:bookworm";
/// The Debian suite it is built from.
pub const RUST_IMAGE_SUITE: &str = "bookworm";
/// Its packages (on top of Debian's minbase): the toolchain, a C linker and
/// libc headers for build scripts and `cc`, TLS roots and git for cargo,
/// make, and `ps`/`kill` for the shell.
pub const RUST_IMAGE_PACKAGES: &[&str] = &[
    "ca-certificates",
    "cargo",
    "gcc",
    "git",
    "libc6-dev",
    "make",
    "procps",
    "rustc",
];

/// Returns the reference of the Rust toolchain image in `home`'s image
/// store, building it first when it is not cached (a few minutes; needs
/// `mmdebstrap` and a Debian mirror). While it builds, says so on
/// `progress`; mmdebstrap's own output goes to stderr when that is a
/// terminal. A cached image costs a file read and says nothing.
pub fn ensure_rust_image(home: &Path, progress: &mut dyn Write) -> Result<String, SessionError> {
    let image_err = |source| SessionError::ImageBuild {
        reference: RUST_IMAGE.to_string(),
        source: Box::new(source),
    };
    let store = nook::ImageStore::open(&home.join("images")).map_err(image_err)?;
    let packages: Vec<String> = RUST_IMAGE_PACKAGES.iter().map(|p| p.to_string()).collect();
    let cached = store
        .debian_cached(RUST_IMAGE_SUITE, &packages)
        .map_err(image_err)?;
    let started = Instant::now();
    if !cached {
        // Progress is best effort: a closed progress stream stops no build.
        let _ = writeln!(
            progress,
            "nook: building the Rust toolchain image {RUST_IMAGE} (Debian {RUST_IMAGE_SUITE}: {}); once, a few minutes",
            RUST_IMAGE_PACKAGES.join(" ")
        );
        let _ = progress.flush();
    }
    let verbose = !cached && std::io::stderr().is_terminal();
    let info = store
        .build_debian(RUST_IMAGE, RUST_IMAGE_SUITE, &packages, verbose)
        .map_err(image_err)?;
    if !cached {
        let _ = writeln!(
            progress,
            "nook: built {RUST_IMAGE} ({}) in {:.0} s",
            info.digest,
            started.elapsed().as_secs_f64()
        );
        let _ = progress.flush();
    }
    Ok(info.reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipe_has_a_toolchain_and_a_linker() {
        for needed in ["cargo", "rustc", "gcc", "libc6-dev", "ca-certificates"] {
            assert!(RUST_IMAGE_PACKAGES.contains(&needed), "{needed}");
        }
    }
}
