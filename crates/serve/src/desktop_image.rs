//! The desktop image: Debian bookworm with an X server on a virtual
//! framebuffer (Xvfb), a light window manager (Openbox), a terminal
//! (xterm), a browser (Firefox ESR), fonts, Tk for Python (small test and
//! demo programs), `xsetroot`/`xset` and a VNC server (x11vnc) for
//! `nook desktop view`. `nook desktop start` boots it when no image is
//! given; `nook image build NAME --desktop` builds the same recipe under
//! another name. Built once and cached by recipe ([`crate::debian_image`]).

use std::io::Write;
use std::path::Path;

use crate::debian_image::{ensure_debian_image, DebianRecipe};
use crate::error::SessionError;

/// The name the desktop image is stored under.
pub const DESKTOP_IMAGE: &str = "nook-desktop:bookworm";
/// The Debian suite it is built from.
pub const DESKTOP_IMAGE_SUITE: &str = "bookworm";
/// Its packages, on top of Debian's minbase. `xfonts-base` gives the X
/// server its `fixed` and `cursor` fonts; `x11-xserver-utils` gives
/// `xset` (the display's readiness check) and `xsetroot`; `procps` gives
/// `ps` and `kill`.
pub const DESKTOP_IMAGE_PACKAGES: &[&str] = &[
    "firefox-esr",
    "fonts-dejavu-core",
    "openbox",
    "procps",
    "python3-tk",
    "x11-xserver-utils",
    "x11vnc",
    "xfonts-base",
    "xterm",
    "xvfb",
];

/// Its build steps: fontconfig's caches made valid for the stored image,
/// so the first xterm, Tk program or Firefox in a new desktop does not
/// rebuild them (measured: a Tk hello-world's first start 16 s without,
/// see docs/desktop.md).
pub const DESKTOP_IMAGE_STEPS: nook::DebianSteps = nook::DebianSteps { font_caches: true };

/// The desktop image's recipe.
pub const DESKTOP_IMAGE_RECIPE: DebianRecipe = DebianRecipe {
    reference: DESKTOP_IMAGE,
    suite: DESKTOP_IMAGE_SUITE,
    packages: DESKTOP_IMAGE_PACKAGES,
    what: "the desktop image",
    steps: DESKTOP_IMAGE_STEPS,
};

/// Returns the reference of the desktop image in `home`'s image store,
/// building it first when it is not cached (minutes: mmdebstrap alone took
/// 43 s here on a quiet machine; needs `mmdebstrap` and a Debian mirror). While it builds, says so on
/// `progress`; a cached image costs a file read and says nothing.
pub fn ensure_desktop_image(home: &Path, progress: &mut dyn Write) -> Result<String, SessionError> {
    ensure_debian_image(home, &DESKTOP_IMAGE_RECIPE, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipe_has_a_display_a_window_manager_and_the_tools_the_desktop_uses() {
        // start_desktop runs Xvfb, openbox and xset; view runs x11vnc.
        for needed in [
            "xvfb",
            "openbox",
            "x11-xserver-utils",
            "x11vnc",
            "xterm",
            "firefox-esr",
            "python3-tk",
        ] {
            assert!(DESKTOP_IMAGE_PACKAGES.contains(&needed), "{needed}");
        }
        assert_eq!(DESKTOP_IMAGE_RECIPE.reference, DESKTOP_IMAGE);
        const { assert!(DESKTOP_IMAGE_RECIPE.steps.font_caches) };
    }
}
