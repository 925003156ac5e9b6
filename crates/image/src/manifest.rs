//! OCI and Docker v2 manifests, indexes and image configs: parsed with
//! size limits and validated before anything acts on them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestError};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker v2 schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Uncompressed OCI layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Gzip-compressed OCI layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Zstd-compressed OCI layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Gzip-compressed Docker layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest media type this crate asks registries for.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Largest manifest or index accepted, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config accepted, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Most layers an image may have (overlayfs and ext4 do not care, but a
/// manifest claiming more is garbage).
pub const MAX_LAYERS: usize = 512;

/// Why a manifest, index or config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid JSON of the expected shape.
    #[error("malformed JSON")]
    Json(#[source] serde_json::Error),
    /// Too large to be a real manifest.
    #[error("document is {0} bytes, over the limit of {1}")]
    TooLarge(u64, u64),
    /// Docker schema 1 or an unknown schema.
    #[error("unsupported schemaVersion {0}: only schema 2 manifests are supported (re-push the image with a current tool)")]
    SchemaVersion(i64),
    /// A media type this crate does not understand.
    #[error("unsupported media type {0:?}")]
    MediaType(String),
    /// Neither `layers` nor `manifests`.
    #[error("document is neither an image manifest nor an index")]
    UnknownKind,
    /// A descriptor's digest is unusable.
    #[error("bad descriptor digest")]
    Digest(#[source] DigestError),
    /// A descriptor's size is negative.
    #[error("descriptor {0} has negative size {1}")]
    NegativeSize(String, i64),
    /// Too many layers.
    #[error("manifest lists {0} layers, over the limit of {MAX_LAYERS}")]
    TooManyLayers(usize),
    /// The config is for another OS or architecture.
    #[error("image is for {0}/{1}, not linux/amd64")]
    Platform(String, String),
    /// diff_ids and layers disagree.
    #[error("config lists {0} diff_ids for {1} layers")]
    DiffIdCount(usize, usize),
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default)]
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: String,
    /// Size of the referenced content in bytes.
    pub size: i64,
    /// Platform, in index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    /// The validated digest.
    pub fn digest(&self) -> Result<Digest, ManifestError> {
        Digest::parse(&self.digest).map_err(ManifestError::Digest)
    }

    /// The validated size.
    pub fn size(&self) -> Result<u64, ManifestError> {
        u64::try_from(self.size)
            .map_err(|_| ManifestError::NegativeSize(self.digest.clone(), self.size))
    }
}

/// A platform in an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`).
    #[serde(default)]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default)]
    pub os: String,
    /// CPU variant, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker v2 schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: i64,
    /// Media type, if stated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: i64,
    /// Media type, if stated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The referenced manifests.
    pub manifests: Vec<Descriptor>,
}

/// A parsed manifest document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// A single-platform image.
    Image(ImageManifest),
    /// A list of per-platform manifests (or nested indexes).
    Index(ImageIndex),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<i64>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
}

/// Parses a manifest or index and validates its descriptors.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    check_len(bytes, MAX_MANIFEST_BYTES)?;
    let probe: Probe = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
    let version = probe.schema_version.unwrap_or(0);
    if version != 2 {
        return Err(ManifestError::SchemaVersion(version));
    }
    let is_index = match probe.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => return Err(ManifestError::MediaType(other.to_owned())),
        None if probe.manifests.is_some() => true,
        None if probe.layers.is_some() => false,
        None => return Err(ManifestError::UnknownKind),
    };
    if is_index {
        let index: ImageIndex = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        for entry in &index.manifests {
            entry.digest()?;
            entry.size()?;
        }
        Ok(Manifest::Index(index))
    } else {
        let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        validate_image_manifest(&manifest)?;
        Ok(Manifest::Image(manifest))
    }
}

fn validate_image_manifest(m: &ImageManifest) -> Result<(), ManifestError> {
    if m.layers.len() > MAX_LAYERS {
        return Err(ManifestError::TooManyLayers(m.layers.len()));
    }
    m.config.digest()?;
    m.config.size()?;
    match m.config.media_type.as_str() {
        OCI_CONFIG | DOCKER_CONFIG | "" => {}
        other => return Err(ManifestError::MediaType(other.to_owned())),
    }
    for layer in &m.layers {
        layer.digest()?;
        layer.size()?;
        LayerCompression::from_media_type(&layer.media_type)?;
    }
    Ok(())
}

fn check_len(bytes: &[u8], max: u64) -> Result<(), ManifestError> {
    let len = bytes.len() as u64;
    if len > max {
        return Err(ManifestError::TooLarge(len, max));
    }
    Ok(())
}

/// How a layer blob is compressed, as its media type says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
    /// Unknown: decided by sniffing the blob's first bytes.
    Sniff,
}

impl LayerCompression {
    /// Maps a layer media type; refuses non-layer content.
    pub fn from_media_type(media_type: &str) -> Result<LayerCompression, ManifestError> {
        match media_type {
            OCI_LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => {
                Ok(LayerCompression::None)
            }
            OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Ok(LayerCompression::Gzip),
            OCI_LAYER_ZSTD => Ok(LayerCompression::Zstd),
            "" => Ok(LayerCompression::Sniff),
            other => Err(ManifestError::MediaType(other.to_owned())),
        }
    }
}

/// Picks the linux/amd64 entry of an index. Returns the chosen descriptor,
/// or a description of what the index offers.
pub fn select_linux_amd64(index: &ImageIndex) -> Result<&Descriptor, String> {
    let is_amd64 = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    };
    if let Some(d) = index.manifests.iter().find(is_amd64) {
        return Ok(d);
    }
    // An index without platforms and one entry (common in OCI layouts) is
    // taken as is; its config is checked for the platform later.
    if index.manifests.len() == 1 && index.manifests[0].platform.is_none() {
        return Ok(&index.manifests[0]);
    }
    let offered: Vec<String> = index
        .manifests
        .iter()
        .map(|d| match &d.platform {
            Some(p) => format!("{}/{}", p.os, p.architecture),
            None => "unknown".to_owned(),
        })
        .collect();
    Err(offered.join(", "))
}

/// The parts of an image config file that matter here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfigFile {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// Run-time defaults.
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
    /// Layer diff ids.
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

/// Run-time defaults of an image config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Entrypoint argv.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default command argv.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// User (name, uid, `uid:gid`).
    #[serde(default)]
    pub user: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// The `rootfs` section of an image config.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    /// Digests of the uncompressed layers, base first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// Parses an image config, checks it is a linux/amd64 image and that its
/// diff ids match the layer count (when it lists any).
pub fn parse_config(bytes: &[u8], layer_count: usize) -> Result<ConfigFile, ManifestError> {
    check_len(bytes, MAX_CONFIG_BYTES)?;
    let config: ConfigFile = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
    let os_ok = config.os.is_empty() || config.os == "linux";
    let arch_ok = config.architecture.is_empty() || config.architecture == "amd64";
    if !os_ok || !arch_ok {
        return Err(ManifestError::Platform(config.os, config.architecture));
    }
    if let Some(rootfs) = &config.rootfs {
        if !rootfs.diff_ids.is_empty() && rootfs.diff_ids.len() != layer_count {
            return Err(ManifestError::DiffIdCount(
                rootfs.diff_ids.len(),
                layer_count,
            ));
        }
        for id in &rootfs.diff_ids {
            Digest::parse(id).map_err(ManifestError::Digest)?;
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest_json(layer_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"{OCI_CONFIG}","digest":"{D}","size":2}},
            "layers":[{{"mediaType":"{layer_type}","digest":"{D}","size":10}}]}}"#
        )
    }

    #[test]
    fn parses_image_manifest() {
        let m = parse_manifest(manifest_json(OCI_LAYER_GZIP).as_bytes()).unwrap();
        let Manifest::Image(m) = m else {
            panic!("not an image")
        };
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].digest().unwrap().to_string(), D);
    }

    #[test]
    fn refuses_foreign_layers_and_schema1() {
        let foreign = manifest_json("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip");
        assert!(matches!(
            parse_manifest(foreign.as_bytes()),
            Err(ManifestError::MediaType(_))
        ));
        let v1 = r#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(matches!(
            parse_manifest(v1.as_bytes()),
            Err(ManifestError::SchemaVersion(1))
        ));
    }

    #[test]
    fn selects_linux_amd64() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            "1".repeat(64)
        );
        let Manifest::Index(idx) = parse_manifest(idx.as_bytes()).unwrap() else {
            panic!("not an index")
        };
        let d = select_linux_amd64(&idx).unwrap();
        assert!(d.digest.ends_with(&"1".repeat(64)));
        let arm_only = ImageIndex {
            manifests: vec![idx.manifests[0].clone(), idx.manifests[0].clone()],
            ..idx
        };
        assert_eq!(
            select_linux_amd64(&arm_only).unwrap_err(),
            "linux/arm64, linux/arm64"
        );
    }

    #[test]
    fn config_platform_and_diff_ids_checked() {
        let arm = r#"{"architecture":"arm64","os":"linux"}"#;
        assert!(matches!(
            parse_config(arm.as_bytes(), 0),
            Err(ManifestError::Platform(..))
        ));
        let cfg = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["A=1"],"WorkingDir":"/w"}},"rootfs":{{"type":"layers","diff_ids":["{D}"]}}}}"#
        );
        let c = parse_config(cfg.as_bytes(), 1).unwrap();
        assert_eq!(c.config.unwrap().working_dir.as_deref(), Some("/w"));
        assert!(matches!(
            parse_config(cfg.as_bytes(), 2),
            Err(ManifestError::DiffIdCount(1, 2))
        ));
    }

    proptest! {
        #[test]
        fn parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_manifest(&bytes);
            let _ = parse_config(&bytes, 1);
        }

        #[test]
        fn parser_never_panics_on_mutated_json(
            layer_type in "[a-z./+-]{0,60}",
            size in any::<i64>(),
            digest in "[a-z0-9:]{0,80}",
            version in any::<i64>(),
            cut in 0usize..400,
        ) {
            let doc = format!(
                r#"{{"schemaVersion":{version},"config":{{"digest":"{digest}","size":{size}}},"layers":[{{"mediaType":"{layer_type}","digest":"{digest}","size":{size}}}],"manifests":[{{"digest":"{digest}","size":{size}}}]}}"#
            );
            let _ = parse_manifest(doc.as_bytes());
            let end = cut.min(doc.len());
            let _ = parse_manifest(&doc.as_bytes()[..end]);
            if let Ok(Manifest::Index(i)) = parse_manifest(doc.as_bytes()) {
                let _ = select_linux_amd64(&i);
            }
        }
    }
}
