//! Importing images from OCI image layout directories and `docker save`
//! archives.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{io_err, ImageError};
use crate::manifest::{self, Descriptor, ImageManifest, Manifest};
use crate::store::{canonical_name, ImageInfo, ImageStore};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// The name an imported image is recorded under: the canonical form of a
/// valid reference, else the text as given.
fn record_name(name: &str) -> String {
    match oci_client::Reference::try_from(name) {
        Ok(r) if r.digest().is_none() => canonical_name(&r),
        _ => name.to_owned(),
    }
}

fn bad(path: &Path, kind: &'static str, problem: impl Into<String>) -> ImageError {
    ImageError::BadInput {
        path: path.to_owned(),
        kind,
        problem: problem.into(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Normalises a path inside an archive (`./a//b` → `a/b`), resolving `..`
/// against `base`; `None` if it leaves the archive.
fn archive_path(base: &[&str], raw: &str) -> Option<String> {
    let mut parts: Vec<&str> = if raw.starts_with('/') {
        Vec::new()
    } else {
        base.to_vec()
    };
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

const OCI_LAYOUT_KIND: &str = "OCI image layout directory";
const DOCKER_KIND: &str = "docker save archive";
const MAX_JSON: u64 = manifest::MAX_CONFIG_BYTES;

impl ImageStore {
    /// Imports an image from an OCI image layout directory. `reference`
    /// picks the manifest by its `org.opencontainers.image.ref.name`
    /// annotation (full name or tag) when the layout holds several, and
    /// names the image; without it the layout's own name annotation is
    /// used, else the image is named by its digest.
    pub fn import_oci_layout(
        &self,
        dir: &Path,
        reference: Option<&str>,
    ) -> Result<ImageInfo, ImageError> {
        let layout = dir.join("oci-layout");
        if !layout.is_file() {
            return Err(bad(dir, OCI_LAYOUT_KIND, "it has no oci-layout file"));
        }
        let index_path = dir.join("index.json");
        let index_bytes = read_limited(&index_path, manifest::MAX_MANIFEST_BYTES)?;
        let index = match manifest::parse_manifest(&index_bytes) {
            Ok(Manifest::Index(i)) => i,
            Ok(Manifest::Image(_)) => {
                return Err(bad(dir, OCI_LAYOUT_KIND, "index.json is not an index"))
            }
            Err(source) => {
                return Err(ImageError::Manifest {
                    what: index_path.display().to_string(),
                    source,
                })
            }
        };
        let tag = reference
            .and_then(|r| oci_client::Reference::try_from(r).ok())
            .and_then(|r| r.tag().map(str::to_owned));
        let by_name: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|d| {
                let name = d.annotations.as_ref().and_then(|a| a.get(REF_NAME));
                name.is_some_and(|n| Some(n.as_str()) == reference || Some(n) == tag.as_ref())
            })
            .collect();
        let chosen = match by_name.as_slice() {
            [one] => (*one).clone(),
            _ => manifest::select_linux_amd64(&index)
                .map_err(|offered| {
                    bad(
                        dir,
                        OCI_LAYOUT_KIND,
                        format!("cannot choose an image among: {offered}; pass a reference"),
                    )
                })?
                .clone(),
        };
        let _lock = self.shared_lock()?;
        let read_layout_blob =
            |d: &Descriptor, max: u64| -> Result<(Digest, Vec<u8>), ImageError> {
                let digest = d.digest().map_err(|source| ImageError::Manifest {
                    what: index_path.display().to_string(),
                    source,
                })?;
                let path = dir.join("blobs/sha256").join(digest.hex());
                let bytes = read_limited(&path, max)?;
                let actual = Digest::of_bytes(&bytes);
                if actual != digest {
                    return Err(ImageError::DigestMismatch {
                        what: path.display().to_string(),
                        expected: digest,
                        actual,
                    });
                }
                Ok((digest, bytes))
            };
        let (mut digest, mut bytes) = read_layout_blob(&chosen, manifest::MAX_MANIFEST_BYTES)?;
        let image = loop {
            let what = || format!("manifest {digest} in {}", dir.display());
            match manifest::parse_manifest(&bytes).map_err(|source| ImageError::Manifest {
                what: what(),
                source,
            })? {
                Manifest::Image(m) => break m,
                Manifest::Index(nested) => {
                    let entry = manifest::select_linux_amd64(&nested).map_err(|offered| {
                        ImageError::NoPlatform {
                            reference: what(),
                            offered,
                        }
                    })?;
                    let entry = entry.clone();
                    (digest, bytes) = read_layout_blob(&entry, manifest::MAX_MANIFEST_BYTES)?;
                }
            }
        };
        let mut blobs = vec![image.config.clone()];
        blobs.extend(image.layers.iter().cloned());
        for desc in blobs {
            let bad_desc = |source| ImageError::Manifest {
                what: format!("manifest {digest}"),
                source,
            };
            let d = desc.digest().map_err(bad_desc)?;
            let size = desc.size().map_err(bad_desc)?;
            if self.has_blob(&d) {
                continue;
            }
            let path = dir.join("blobs/sha256").join(d.hex());
            let file = File::open(&path).map_err(io_err("open blob", &path))?;
            self.put_blob(
                &mut BufReader::new(file),
                &path.display().to_string(),
                Some((&d, size)),
            )?;
        }
        self.put_blob_bytes(
            &bytes,
            &format!("manifest {digest}"),
            Some((&digest, bytes.len() as u64)),
        )?;
        self.commit_image(&digest)?;
        let annotation = chosen
            .annotations
            .as_ref()
            .and_then(|a| a.get(CONTAINERD_NAME).or_else(|| a.get(REF_NAME)));
        let name = match (reference, annotation) {
            (Some(r), _) => record_name(r),
            (None, Some(n)) if n.contains('/') || n.contains(':') => record_name(n),
            _ => digest.to_string(),
        };
        self.tag(&name, &digest)?;
        self.info_for(&digest, &name)
    }

    /// Imports every image of a `docker save` archive (legacy or OCI style)
    /// and names each by its RepoTags; returns the first.
    pub fn import_docker_archive(&self, tar_path: &Path) -> Result<ImageInfo, ImageError> {
        // Pass 1: manifest.json and symlinks (docker dedups layers by linking).
        let mut top: Option<Vec<u8>> = None;
        let mut links: HashMap<String, String> = HashMap::new();
        for_each_member(tar_path, |path, entry| {
            let kind = entry.header().entry_type();
            if kind.is_symlink() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned());
                let base: Vec<&str> = path.split('/').collect();
                if let Some(t) = target.and_then(|t| archive_path(&base[..base.len() - 1], &t)) {
                    links.insert(path.to_owned(), t);
                }
            } else if kind.is_file() && path == "manifest.json" && entry.size() <= MAX_JSON {
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .map_err(io_err("read", tar_path))?;
                top = Some(buf);
            }
            Ok(())
        })?;
        let resolve = |p: &str| -> String {
            let mut p = archive_path(&[], p).unwrap_or_default();
            for _ in 0..8 {
                match links.get(&p) {
                    Some(t) => p = t.clone(),
                    None => break,
                }
            }
            p
        };
        let top = top.ok_or_else(|| bad(tar_path, DOCKER_KIND, "it has no manifest.json"))?;
        let entries: Vec<DockerManifestEntry> =
            serde_json::from_slice(&top).map_err(|source| ImageError::Json {
                op: "parse manifest.json of",
                path: tar_path.to_owned(),
                source,
            })?;
        if entries.is_empty() {
            return Err(bad(
                tar_path,
                DOCKER_KIND,
                "its manifest.json lists no images",
            ));
        }
        let layer_paths: HashSet<String> = entries
            .iter()
            .flat_map(|e| e.layers.iter().map(|l| resolve(l)))
            .collect();
        let config_paths: HashSet<String> = entries.iter().map(|e| resolve(&e.config)).collect();

        let _lock = self.shared_lock()?;
        // Pass 2: configs into memory, layers streamed into the store.
        let mut jsons: HashMap<String, Vec<u8>> = HashMap::new();
        let mut stored: HashMap<String, (Digest, u64)> = HashMap::new();
        for_each_member(tar_path, |path, entry| {
            if !entry.header().entry_type().is_file() {
                return Ok(());
            }
            if config_paths.contains(path) && entry.size() <= MAX_JSON {
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .map_err(io_err("read", tar_path))?;
                jsons.insert(path.to_owned(), buf);
            } else if layer_paths.contains(path) && !stored.contains_key(path) {
                let what = format!("{path} in {}", tar_path.display());
                let blob = self.put_blob(entry, &what, None)?;
                stored.insert(path.to_owned(), blob);
            }
            Ok(())
        })?;

        let mut first = None;
        for entry in &entries {
            let config_path = resolve(&entry.config);
            let config = jsons.get(&config_path).ok_or_else(|| {
                bad(
                    tar_path,
                    DOCKER_KIND,
                    format!("config {config_path} is missing"),
                )
            })?;
            manifest::parse_config(config, entry.layers.len()).map_err(|source| {
                ImageError::Manifest {
                    what: format!("{config_path} in {}", tar_path.display()),
                    source,
                }
            })?;
            let config_digest = self.put_blob_bytes(config, &config_path, None)?;
            let mut layers = Vec::new();
            for l in &entry.layers {
                let p = resolve(l);
                let (digest, size) = stored
                    .get(&p)
                    .cloned()
                    .ok_or_else(|| bad(tar_path, DOCKER_KIND, format!("layer {p} is missing")))?;
                layers.push(Descriptor {
                    media_type: self.sniff_layer_type(&digest)?.to_owned(),
                    digest: digest.to_string(),
                    size: size as i64,
                    platform: None,
                    annotations: None,
                });
            }
            let m = ImageManifest {
                schema_version: 2,
                media_type: Some(manifest::OCI_MANIFEST.to_owned()),
                config: Descriptor {
                    media_type: manifest::OCI_CONFIG.to_owned(),
                    digest: config_digest.to_string(),
                    size: config.len() as i64,
                    platform: None,
                    annotations: None,
                },
                layers,
                annotations: None,
            };
            let bytes = serde_json::to_vec(&m).map_err(|source| ImageError::Json {
                op: "serialize a manifest for",
                path: tar_path.to_owned(),
                source,
            })?;
            let digest = self.put_blob_bytes(&bytes, "synthesized manifest", None)?;
            self.commit_image(&digest)?;
            let names: Vec<String> = match &entry.repo_tags {
                Some(tags) if !tags.is_empty() => tags.iter().map(|t| record_name(t)).collect(),
                _ => vec![digest.to_string()],
            };
            for n in &names {
                self.tag(n, &digest)?;
            }
            if first.is_none() {
                first = Some((digest, names[0].clone()));
            }
        }
        let (digest, name) =
            first.ok_or_else(|| bad(tar_path, DOCKER_KIND, "no image imported"))?;
        self.info_for(&digest, &name)
    }

    fn sniff_layer_type(&self, digest: &Digest) -> Result<&'static str, ImageError> {
        let path = self.blob_path(digest);
        let mut head = [0u8; 4];
        let mut file = File::open(&path).map_err(io_err("open blob", &path))?;
        let n = file.read(&mut head).map_err(io_err("read blob", &path))?;
        Ok(match &head[..n] {
            [0x1f, 0x8b, ..] => manifest::OCI_LAYER_GZIP,
            [0x28, 0xb5, 0x2f, 0xfd] => manifest::OCI_LAYER_ZSTD,
            _ => manifest::OCI_LAYER_TAR,
        })
    }
}

fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, ImageError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    if bytes.len() as u64 > max {
        return Err(ImageError::BadInput {
            path: path.to_owned(),
            kind: "metadata file",
            problem: format!("it is larger than {max} bytes"),
        });
    }
    Ok(bytes)
}

/// Calls `f` with each member's normalised path (members whose path leaves
/// the archive are skipped).
fn for_each_member(
    tar_path: &Path,
    mut f: impl FnMut(&str, &mut tar::Entry<'_, BufReader<File>>) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let file = File::open(tar_path).map_err(io_err("open", tar_path))?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(256 << 10, file));
    let tar_err = |e: io::Error| ImageError::BadInput {
        path: tar_path.to_owned(),
        kind: DOCKER_KIND,
        problem: format!("unreadable tar: {e}"),
    };
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if let Some(path) = archive_path(&[], &raw).filter(|_| !raw.starts_with('/')) {
            f(&path, &mut entry)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_normalise_and_stay_inside() {
        assert_eq!(archive_path(&[], "./a//b/").as_deref(), Some("a/b"));
        assert_eq!(
            archive_path(&["x"], "../y/layer.tar").as_deref(),
            Some("y/layer.tar")
        );
        assert_eq!(archive_path(&[], "../escape"), None);
        assert_eq!(archive_path(&[], "."), None);
    }

    #[test]
    fn record_names_are_canonical() {
        assert_eq!(record_name("busybox:1"), "docker.io/library/busybox:1");
        assert_eq!(record_name("127.0.0.1:5000/t:1"), "127.0.0.1:5000/t:1");
    }
}
