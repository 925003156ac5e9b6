//! `nook pull`, `nook images`, `nook rmi`, `nook image ...` and
//! `nook volume ...`: the image store and named volumes under `$NOOK_HOME`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use nook::{ImageInfo, ImageStore, PullOptions, VolumeStore};

use crate::exit::{self, report};

/// The image store at `$NOOK_HOME/images`.
pub fn open_store() -> Result<ImageStore, nook::ImageError> {
    ImageStore::open(&nook::default_home().join("images"))
}

fn progress() -> bool {
    std::io::stderr().is_terminal()
}

/// Finds `reference` in the store, pulling it when it is not there.
pub fn resolve_image(reference: &str, insecure: bool) -> Result<ImageInfo, nook::ImageError> {
    open_store()?.get_or_pull(reference, &pull_options(reference, insecure))
}

fn pull_options(reference: &str, insecure: bool) -> PullOptions {
    let mut opts = PullOptions {
        progress: progress(),
        ..PullOptions::default()
    };
    if insecure {
        if let Some((host, _)) = reference.split_once('/') {
            opts.insecure_hosts.push(host.to_string());
        }
    }
    opts
}

/// Parses `512M`, `2G`, `1.5GiB`, `4096K` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid size `{s}`"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("invalid size unit in `{s}`: use K, M, G or T")),
    };
    let bytes = (n * mult as f64) as u64;
    if bytes < 16 << 20 {
        return Err(format!("size `{s}` is too small: at least 16M"));
    }
    Ok(bytes)
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn fail(e: &dyn std::error::Error) -> i32 {
    report(e);
    exit::NOOK_FAILED
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Image reference (`alpine`, `ghcr.io/o/x:1`, `127.0.0.1:5000/test:1`).
    pub reference: String,
    /// Speak plain http to this reference's registry (loopback registries always are).
    #[arg(long)]
    pub insecure: bool,
}

pub fn pull(args: PullArgs) -> i32 {
    let store = match open_store() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    match store.pull(
        &args.reference,
        &pull_options(&args.reference, args.insecure),
    ) {
        Ok(info) => {
            println!("{} {}", info.reference, info.digest);
            0
        }
        Err(e) => fail(&e),
    }
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

fn image_json(i: &ImageInfo) -> serde_json::Value {
    serde_json::json!({
        "reference": i.reference,
        "references": i.references,
        "digest": i.digest,
        "rootfs": i.rootfs,
        "size": i.size,
        "content_size": i.content_size,
        "layers": i.layers.len(),
        "config": {
            "env": i.config.env,
            "entrypoint": i.config.entrypoint,
            "cmd": i.config.cmd,
            "working_dir": i.config.working_dir,
            "user": i.config.user,
        },
    })
}

pub fn images(args: ImagesArgs) -> i32 {
    let list = match open_store().and_then(|s| s.list()) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    if args.json {
        let v: Vec<_> = list.iter().map(image_json).collect();
        println!("{}", serde_json::Value::Array(v));
        return 0;
    }
    println!("{:<50} {:<19} {:>10}", "REFERENCE", "DIGEST", "SIZE");
    for i in &list {
        let digest: String = i.digest.chars().take(19).collect();
        for r in &i.references {
            println!("{r:<50} {digest:<19} {:>10}", human(i.size));
        }
        if i.references.is_empty() {
            println!("{:<50} {digest:<19} {:>10}", "<none>", human(i.size));
        }
    }
    0
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Image name or digest; a digest removes every name of the image.
    pub reference: String,
}

pub fn rmi(args: RmiArgs) -> i32 {
    match open_store().and_then(|s| s.remove(&args.reference)) {
        Ok(()) => {
            println!("removed {}", args.reference);
            0
        }
        Err(e) => fail(&e),
    }
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List images (same as `nook images`).
    Ls(ImagesArgs),
    /// Pull an image (same as `nook pull`).
    Pull(PullArgs),
    /// Remove an image name (same as `nook rmi`).
    Rm(RmiArgs),
    /// Remove unnamed images, unused blobs, stale templates and leftovers of killed runs (same as `nook gc`).
    Gc,
    /// Build an image from Debian packages with mmdebstrap (as root).
    Build(BuildArgs),
    /// Import an OCI image layout directory or a `docker save` archive.
    Import(ImportArgs),
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Name of the new image.
    pub name: String,
    /// Debian suite (bookworm, trixie, ...).
    #[arg(long, value_name = "SUITE", required_unless_present = "desktop")]
    pub debian: Option<String>,
    /// Packages to install, comma separated (repeatable).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub packages: Vec<String>,
    /// Build nook's desktop image (what `nook desktop start` boots): Debian bookworm with Xvfb, Openbox, xterm, Firefox ESR, fonts, python3-tk and x11vnc, plus any --packages; its font caches are built (as --font-caches).
    #[arg(long, conflicts_with = "debian")]
    pub desktop: bool,
    /// Build fontconfig's caches at the end, valid for the stored image, so the first program using fonts in a VM does not rebuild them (tens of seconds under emulation).
    #[arg(long)]
    pub font_caches: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// An OCI image layout directory, or a `docker save` tar archive.
    pub path: PathBuf,
    /// Name for an OCI layout's image (archives carry their own RepoTags).
    #[arg(long, value_name = "REF")]
    pub name: Option<String>,
}

pub fn image(cmd: ImageCommand) -> i32 {
    let store = match open_store() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let done = |r: Result<ImageInfo, nook::ImageError>| match r {
        Ok(info) => {
            println!("{} {}", info.reference, info.digest);
            0
        }
        Err(e) => fail(&e),
    };
    match cmd {
        ImageCommand::Ls(a) => images(a),
        ImageCommand::Pull(a) => pull(a),
        ImageCommand::Rm(a) => rmi(a),
        ImageCommand::Gc => gc_store(&store),
        ImageCommand::Build(a) => {
            let mut packages: Vec<String> =
                a.packages.into_iter().filter(|p| !p.is_empty()).collect();
            let mut steps = nook::DebianSteps {
                font_caches: a.font_caches,
            };
            let suite = match a.debian {
                Some(suite) => suite,
                None => {
                    use nook_serve::desktop_image::{
                        DESKTOP_IMAGE_PACKAGES, DESKTOP_IMAGE_STEPS, DESKTOP_IMAGE_SUITE,
                    };
                    packages.extend(DESKTOP_IMAGE_PACKAGES.iter().map(|p| p.to_string()));
                    steps.font_caches |= DESKTOP_IMAGE_STEPS.font_caches;
                    DESKTOP_IMAGE_SUITE.to_string()
                }
            };
            done(store.build_debian_with(&a.name, &suite, &packages, steps, progress()))
        }
        ImageCommand::Import(a) => {
            if a.path.is_dir() {
                done(store.import_oci_layout(&a.path, a.name.as_deref()))
            } else {
                if a.name.is_some() {
                    eprintln!("nook: --name applies to OCI layouts; a docker archive is named by its RepoTags");
                    return exit::NOOK_FAILED;
                }
                done(store.import_docker_archive(&a.path))
            }
        }
    }
}

/// `nook gc` (and `nook image gc`): leftovers of killed nook processes
/// (run directories, scratch disks, half-made snapshots and volumes), then
/// unnamed images, unused blobs and stale templates.
pub fn gc() -> i32 {
    match open_store() {
        Ok(store) => gc_store(&store),
        Err(e) => fail(&e),
    }
}

fn gc_store(store: &ImageStore) -> i32 {
    let home = nook::default_home();
    let left = nook::gc_leftovers(&home);
    for path in &left.removed {
        println!("removed {}", path.display());
    }
    println!(
        "removed {} leftovers of killed nook processes; freed {}",
        left.removed.len(),
        human(left.freed_bytes)
    );
    let r = match store.gc() {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    println!(
        "removed {} images, {} blobs, {} temporary entries; freed {}",
        r.images_removed,
        r.blobs_removed,
        r.temp_removed,
        human(r.bytes_freed)
    );
    // Templates of images (or kernels, agents) that are gone.
    match nook::gc_templates(&home, false) {
        Ok(t) => {
            println!(
                "removed {} stale templates; freed {}",
                t.removed,
                human(t.freed_bytes)
            );
            0
        }
        Err(e) => fail(&e),
    }
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// List named volumes.
    Ls(ImagesArgs),
    /// Create a named volume (`nook run --volume` creates them on first use too).
    Create(VolumeCreateArgs),
    /// Delete a named volume and its data (refused while a VM uses it).
    Rm(VolumeRmArgs),
}

#[derive(Args, Debug)]
pub struct VolumeCreateArgs {
    pub name: String,
    /// File system size (sparse on the host).
    #[arg(long, default_value = "1G", value_parser = parse_size, value_name = "SIZE")]
    pub size: u64,
}

#[derive(Args, Debug)]
pub struct VolumeRmArgs {
    pub name: String,
}

pub fn volume(cmd: VolumeCommand) -> i32 {
    let store = match VolumeStore::in_home(&nook::default_home()) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    match cmd {
        VolumeCommand::Ls(a) => {
            let list = match store.list() {
                Ok(l) => l,
                Err(e) => return fail(&e),
            };
            if a.json {
                let v: Vec<_> = list
                    .iter()
                    .map(|v| {
                        serde_json::json!({
                            "name": v.name, "path": v.path, "size": v.size, "allocated": v.allocated,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
                return 0;
            }
            println!("{:<32} {:>10} {:>10}", "NAME", "SIZE", "USED");
            for v in &list {
                println!(
                    "{:<32} {:>10} {:>10}",
                    v.name,
                    human(v.size),
                    human(v.allocated)
                );
            }
            0
        }
        VolumeCommand::Create(a) => match store.ensure(&a.name, a.size) {
            Ok(v) => {
                println!("{}", v.path.display());
                0
            }
            Err(e) => fail(&e),
        },
        VolumeCommand::Rm(a) => match store.remove(&a.name) {
            Ok(()) => {
                println!("removed {}", a.name);
                0
            }
            Err(e) => fail(&e),
        },
    }
}

/// Parses `--volume SRC:/guest/path[:ro|rw]`: SRC with a `/` is a host ext4
/// image file, otherwise a named volume (created at `size` on first use).
pub fn parse_volume(spec: &str, size: u64) -> Result<nook::VolumeMount, String> {
    let (rest, read_only) = if let Some(r) = spec.strip_suffix(":ro") {
        (r, true)
    } else if let Some(r) = spec.strip_suffix(":rw") {
        (r, false)
    } else {
        (spec, false)
    };
    let Some((src, guest)) = rest.rsplit_once(':') else {
        return Err(format!(
            "--volume expects NAME:/path[:ro] or /host/file.img:/path[:ro], got `{spec}`"
        ));
    };
    if !guest.starts_with('/') {
        return Err(format!(
            "--volume `{spec}`: the guest path `{guest}` must be absolute"
        ));
    }
    let disk = if src.contains('/') {
        let p = Path::new(src);
        if !p.is_file() {
            return Err(format!("--volume `{spec}`: {src} is not a file"));
        }
        p.to_path_buf()
    } else {
        let store = VolumeStore::in_home(&nook::default_home()).map_err(|e| e.to_string())?;
        store.ensure(src, size).map_err(|e| e.to_string())?.path
    };
    Ok(nook::VolumeMount {
        disk,
        guest_path: guest.to_string(),
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("33554432"), Ok(32 << 20));
        assert!(parse_size("1K").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("G").is_err());
    }

    #[test]
    fn host_file_volumes() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let p = f.path().display().to_string();
        let m = parse_volume(&format!("{p}:/data:ro"), 0).unwrap();
        assert_eq!(
            (m.disk.as_path(), m.guest_path.as_str(), m.read_only),
            (f.path(), "/data", true)
        );
        let m = parse_volume(&format!("{p}:/a b"), 0).unwrap();
        assert_eq!((m.guest_path.as_str(), m.read_only), ("/a b", false));
        assert!(parse_volume(&format!("{p}:rel"), 0).is_err());
        assert!(parse_volume("/no/such/file.img:/x", 0).is_err());
        assert!(parse_volume("justaname", 0).is_err());
    }
}
