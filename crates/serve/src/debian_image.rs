//! Images nook builds for itself from Debian's packages (the Rust
//! toolchain image, the desktop image): a fixed recipe, built once with
//! nook's Debian image builder and cached by recipe in the image store. A
//! change of recipe builds it again, and two processes asking at once
//! build it once (the store's build lock).

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use crate::error::SessionError;

/// What an image nook builds is made of.
#[derive(Debug, Clone, Copy)]
pub struct DebianRecipe {
    /// The name it is stored under.
    pub reference: &'static str,
    /// The Debian suite it is built from.
    pub suite: &'static str,
    /// Its packages, on top of Debian's minbase.
    pub packages: &'static [&'static str],
    /// What it is, for the progress line (`the Rust toolchain image`).
    pub what: &'static str,
    /// Build steps after the packages are installed.
    pub steps: nook::DebianSteps,
}

/// Returns the reference of `recipe`'s image in `home`'s image store,
/// building it first when it is not cached (minutes; needs `mmdebstrap`
/// and a Debian mirror). While it builds, says so on `progress`;
/// mmdebstrap's own output goes to stderr when that is a terminal. A
/// cached image costs a file read and says nothing.
pub fn ensure_debian_image(
    home: &Path,
    recipe: &DebianRecipe,
    progress: &mut dyn Write,
) -> Result<String, SessionError> {
    let image_err = |source| SessionError::ImageBuild {
        reference: recipe.reference.to_string(),
        source: Box::new(source),
    };
    let store = nook::ImageStore::open(&home.join("images")).map_err(image_err)?;
    let packages: Vec<String> = recipe.packages.iter().map(|p| p.to_string()).collect();
    let cached = store
        .debian_cached_with(recipe.suite, &packages, recipe.steps)
        .map_err(image_err)?;
    let started = Instant::now();
    if !cached {
        // Progress is best effort: a closed progress stream stops no build.
        let _ = writeln!(
            progress,
            "nook: building {} {} (Debian {}: {}); once, a few minutes",
            recipe.what,
            recipe.reference,
            recipe.suite,
            recipe.packages.join(" ")
        );
        let _ = progress.flush();
    }
    let verbose = !cached && std::io::stderr().is_terminal();
    let info = store
        .build_debian_with(
            recipe.reference,
            recipe.suite,
            &packages,
            recipe.steps,
            verbose,
        )
        .map_err(image_err)?;
    if !cached {
        let _ = writeln!(
            progress,
            "nook: built {} ({}) in {:.0} s",
            recipe.reference,
            info.digest,
            started.elapsed().as_secs_f64()
        );
        let _ = progress.flush();
    }
    Ok(info.reference)
}
