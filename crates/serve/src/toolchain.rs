//! The Rust toolchain image: Debian bookworm with Debian's `cargo` and
//! `rustc`, a C linker and the tools a build reaches for. Dev shells and
//! sidecar sessions boot it when a workspace is a Rust project and no image
//! was chosen. Built once and cached by recipe ([`crate::debian_image`]).

use std::io::Write;
use std::path::Path;

use crate::debian_image::{ensure_debian_image, DebianRecipe};
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

/// The toolchain image's recipe.
pub const RUST_IMAGE_RECIPE: DebianRecipe = DebianRecipe {
    reference: RUST_IMAGE,
    suite: RUST_IMAGE_SUITE,
    packages: RUST_IMAGE_PACKAGES,
    what: "the Rust toolchain image",
    steps: nook::DebianSteps { font_caches: false },
};

/// Returns the reference of the Rust toolchain image in `home`'s image
/// store, building it first when it is not cached (a few minutes; needs
/// `mmdebstrap` and a Debian mirror). While it builds, says so on
/// `progress`; mmdebstrap's own output goes to stderr when that is a
/// terminal. A cached image costs a file read and says nothing.
pub fn ensure_rust_image(home: &Path, progress: &mut dyn Write) -> Result<String, SessionError> {
    ensure_debian_image(home, &RUST_IMAGE_RECIPE, progress)
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
