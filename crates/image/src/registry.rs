//! Pulling images from OCI registries (oci-client, driven by a private
//! single-threaded tokio runtime so the public API stays blocking).

use std::fmt;
use std::io::{self, IsTerminal};
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{StreamExt, TryStreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::{Client, Reference};
use tokio::io::AsyncWrite;

use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::{self, Descriptor, Manifest};
use crate::store::{canonical_name, remove_path, ImageInfo, ImageStore};

/// Credentials for a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum RegistryAuth {
    /// No credentials (anonymous bearer tokens are still fetched when the
    /// registry asks for them).
    #[default]
    Anonymous,
    /// User name and password: sent as HTTP basic auth, or exchanged for a
    /// bearer token when the registry uses token auth.
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// A bearer token obtained elsewhere.
    Bearer {
        /// The token.
        token: String,
    },
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            RegistryAuth::Bearer { .. } => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl RegistryAuth {
    fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        use oci_client::secrets::RegistryAuth as A;
        match self {
            RegistryAuth::Anonymous => A::Anonymous,
            RegistryAuth::Basic { username, password } => {
                A::Basic(username.clone(), password.clone())
            }
            RegistryAuth::Bearer { token } => A::Bearer(token.clone()),
        }
    }
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Credentials.
    pub auth: RegistryAuth,
    /// Registries (`host[:port]`) spoken to over plain http. Loopback
    /// registries (`127.0.0.1:5000`, `localhost:5000`, `[::1]:5000`) always are.
    pub insecure_hosts: Vec<String>,
    /// Show download progress bars on a terminal.
    pub progress: bool,
}

/// Parallel blob downloads per pull.
const DOWNLOADS: usize = 3;

fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.split(':').next().unwrap_or(registry),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn parse_reference(reference: &str) -> Result<Reference, ImageError> {
    Reference::try_from(reference)
        .map_err(|e| ImageError::InvalidReference(reference.to_owned(), e))
}

impl ImageStore {
    /// The stored image `reference`, pulled first when the store has none
    /// (what `nook run IMAGE` and every front end that boots an image do).
    pub fn get_or_pull(
        &self,
        reference: &str,
        opts: &PullOptions,
    ) -> Result<ImageInfo, ImageError> {
        if let Some(info) = self.get(reference)? {
            return Ok(info);
        }
        self.pull(reference, opts)
    }

    /// Pulls `reference` (`alpine`, `ghcr.io/o/x:1`, `127.0.0.1:5000/test:1`,
    /// `NAME@sha256:…`) for linux/amd64, stores its blobs, builds its
    /// rootfs and names it. A reference by digest that is already stored
    /// needs no network; a tag is always resolved against the registry, but
    /// nothing already stored is downloaded again.
    pub fn pull(&self, reference: &str, opts: &PullOptions) -> Result<ImageInfo, ImageError> {
        let parsed = parse_reference(reference)?;
        let name = canonical_name(&parsed);
        if let Some(d) = parsed.digest().and_then(|d| Digest::parse(d).ok()) {
            let _lock = self.shared_lock()?;
            if self.read_record(&d)?.is_some() {
                self.tag(&name, &d)?;
                return self.info_for(&d, &name);
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("nook-image-pull")
            .build()
            .map_err(ImageError::Runtime)?;
        runtime.block_on(self.pull_async(&parsed, &name, opts))
    }

    async fn pull_async(
        &self,
        parsed: &Reference,
        name: &str,
        opts: &PullOptions,
    ) -> Result<ImageInfo, ImageError> {
        let registry = parsed.resolve_registry().to_owned();
        let insecure = is_loopback(&registry) || opts.insecure_hosts.contains(&registry);
        let config = ClientConfig {
            protocol: if insecure {
                ClientProtocol::HttpsExcept(vec![registry])
            } else {
                ClientProtocol::Https
            },
            platform_resolver: None,
            ..ClientConfig::default()
        };
        let client = Client::new(config);
        let auth = opts.auth.to_oci();
        let registry_err = |op: &'static str| {
            let reference = parsed.whole();
            move |source| ImageError::Registry {
                op,
                reference,
                source,
            }
        };

        // Resolve to a single linux/amd64 image manifest, verifying each hop.
        let mut target = parsed.clone();
        let mut expected = parsed.digest().and_then(|d| Digest::parse(d).ok());
        let (manifest_bytes, digest, image) = loop {
            let (bytes, _) = client
                .pull_manifest_raw(&target, &auth, manifest::ACCEPTED_MANIFESTS)
                .await
                .map_err(registry_err("fetch the manifest"))?;
            let actual = Digest::of_bytes(&bytes);
            if let Some(want) = &expected {
                if *want != actual {
                    return Err(ImageError::DigestMismatch {
                        what: format!("manifest of {}", target.whole()),
                        expected: want.clone(),
                        actual,
                    });
                }
            }
            let what = || format!("manifest of {}", target.whole());
            match manifest::parse_manifest(&bytes).map_err(|source| ImageError::Manifest {
                what: what(),
                source,
            })? {
                Manifest::Image(m) => break (bytes, actual, m),
                Manifest::Index(index)
                    if expected.is_none() || target.digest() == parsed.digest() =>
                {
                    let entry = manifest::select_linux_amd64(&index).map_err(|offered| {
                        ImageError::NoPlatform {
                            reference: parsed.whole(),
                            offered,
                        }
                    })?;
                    let d = entry.digest().map_err(|source| ImageError::Manifest {
                        what: what(),
                        source,
                    })?;
                    target = parsed.clone_with_digest(d.to_string());
                    expected = Some(d);
                }
                Manifest::Index(_) => {
                    return Err(ImageError::Manifest {
                        what: what(),
                        source: manifest::ManifestError::UnknownKind,
                    })
                }
            }
        };

        let _lock = self.shared_lock()?;
        if self.read_record(&digest)?.is_none() {
            let config_size = image.config.size().unwrap_or(u64::MAX);
            if config_size > manifest::MAX_CONFIG_BYTES {
                return Err(ImageError::Manifest {
                    what: format!("manifest {digest}"),
                    source: manifest::ManifestError::TooLarge(
                        config_size,
                        manifest::MAX_CONFIG_BYTES,
                    ),
                });
            }
            let mut wanted = vec![image.config.clone()];
            wanted.extend(image.layers.iter().cloned());
            self.download_blobs(&client, &target, wanted, opts.progress)
                .await?;
            self.put_blob_bytes(
                &manifest_bytes,
                &format!("manifest of {}", target.whole()),
                Some((&digest, manifest_bytes.len() as u64)),
            )?;
            self.commit_image(&digest)?;
        }
        self.tag(name, &digest)?;
        self.info_for(&digest, name)
    }

    /// Downloads the descriptors' blobs that are not stored yet, a few at a
    /// time, then verifies and moves each into the store.
    async fn download_blobs(
        &self,
        client: &Client,
        image: &Reference,
        wanted: Vec<Descriptor>,
        progress: bool,
    ) -> Result<(), ImageError> {
        let bars = (progress && io::stderr().is_terminal()).then(MultiProgress::new);
        let mut missing = Vec::new();
        for desc in wanted {
            let bad = |source| ImageError::Manifest {
                what: format!("descriptor in the manifest of {}", image.whole()),
                source,
            };
            let digest = desc.digest().map_err(bad)?;
            let size = desc.size().map_err(bad)?;
            if !self.has_blob(&digest) && !missing.iter().any(|(d, _, _)| *d == digest) {
                missing.push((digest, size, desc.media_type));
            }
        }
        // A download that fails, or is dropped because another failed,
        // takes its temporary file with it.
        let fetched: Vec<(Digest, u64, TempFile)> = futures_util::stream::iter(missing)
            .map(|(digest, size, media_type)| {
                let bar = bars.as_ref().map(|m| {
                    let bar = m.add(ProgressBar::new(size));
                    if let Ok(style) = ProgressStyle::with_template(
                        "{prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
                    ) {
                        bar.set_style(style);
                    }
                    bar.set_prefix(digest.hex()[..12].to_owned());
                    bar
                });
                let tmp = TempFile(self.temp_path());
                async move {
                    tracing::info!(blob = %digest, size, media_type, "image: downloading");
                    let file = tokio::fs::File::create(&tmp.0)
                        .await
                        .map_err(crate::error::io_err("create", &tmp.0))?;
                    let out = CountingWriter {
                        file,
                        bar: bar.clone(),
                    };
                    let digest_str = digest.to_string();
                    let pulled = client.pull_blob(image, digest_str.as_str(), out).await;
                    if let Some(bar) = bar {
                        bar.finish();
                    }
                    match pulled {
                        Ok(()) => Ok((digest, size, tmp)),
                        // Writing the file failed (a full disk), not the
                        // registry.
                        Err(OciDistributionError::IoError(e)) => {
                            Err(crate::error::io_err("write", &tmp.0)(e))
                        }
                        Err(source) => Err(ImageError::Registry {
                            op: "download a blob",
                            reference: format!("{}@{digest}", image.repository()),
                            source,
                        }),
                    }
                }
            })
            .buffer_unordered(DOWNLOADS)
            .try_collect()
            .await?;
        for (digest, size, tmp) in fetched {
            self.adopt_blob_file(
                &tmp.0,
                &format!("blob {digest} of {}", image.whole()),
                Some((&digest, size)),
            )?;
        }
        Ok(())
    }
}

/// A download's file under `tmp/`: removed when dropped, unless it was
/// moved into the blobs by then.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = remove_path(&self.0);
    }
}

/// An async file writer that advances a progress bar.
struct CountingWriter {
    file: tokio::fs::File,
    bar: Option<ProgressBar>,
}

impl AsyncWrite for CountingWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.file).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(bar)) = (&polled, &this.bar) {
            bar.inc(*n as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(is_loopback("127.0.0.2"));
        assert!(!is_loopback("registry.example:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn auth_debug_redacts_secrets() {
        let a = RegistryAuth::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
        let b = RegistryAuth::Bearer {
            token: "tok".into(),
        };
        assert!(!format!("{b:?}").contains("tok"));
    }
}
