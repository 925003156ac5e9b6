//! Test fixtures: a layer tar builder that can also write the hostile
//! member names a real tar tool refuses to produce; test images (written as
//! OCI layouts or `docker save` archives, or pushed); Debian's
//! `docker-registry` on a free loopback port.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::manifest::{
    OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use crate::Digest;

use flate2::write::GzEncoder;
use flate2::Compression;

/// Builds a layer tar in memory.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl std::fmt::Debug for LayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerBuilder").finish_non_exhaustive()
    }
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> Self {
        LayerBuilder {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn append_named(&mut self, mut h: tar::Header, name: &str, data: &[u8]) -> &mut Self {
        // `append_data` writes long names as GNU long-name members.
        self.tar
            .append_data(&mut h, name, data)
            .expect("append to an in-memory tar");
        self
    }

    /// A directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.append_named(header(tar::EntryType::Directory, mode, 0), path, &[])
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, content: &[u8], mode: u32) -> &mut Self {
        let h = header(tar::EntryType::Regular, mode, content.len() as u64);
        self.append_named(h, path, content)
    }

    /// A regular file with an owner.
    pub fn file_owned(&mut self, path: &str, content: &[u8], uid: u64, gid: u64) -> &mut Self {
        let mut h = header(tar::EntryType::Regular, 0o644, content.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.append_named(h, path, content)
    }

    /// A symlink.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut h, path, target)
            .expect("append to an in-memory tar");
        self
    }

    /// A hard link to an earlier member.
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        self.tar
            .append_link(&mut h, path, target)
            .expect("append to an in-memory tar");
        self
    }

    /// A whiteout for `dir/name`.
    pub fn whiteout(&mut self, dir: &str, name: &str) -> &mut Self {
        let path = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&path, &[], 0o644)
    }

    /// An opaque marker for `dir`.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), &[], 0o644)
    }

    /// A member of `kind` whose name is written verbatim (up to 100 bytes),
    /// bypassing the tar crate's checks: for `../x` and `/abs` members.
    pub fn raw(
        &mut self,
        kind: tar::EntryType,
        name: &[u8],
        link: &[u8],
        data: &[u8],
    ) -> &mut Self {
        let mut h = header(kind, 0o644, data.len() as u64);
        {
            let gnu = h.as_gnu_mut().expect("gnu header");
            gnu.name = [0; 100];
            gnu.name[..name.len()].copy_from_slice(name);
            gnu.linkname = [0; 100];
            gnu.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        self.tar
            .append(&h, data)
            .expect("append to an in-memory tar");
        self
    }

    /// The finished uncompressed tar.
    pub fn tar(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.tar, tar::Builder::new(Vec::new()));
        builder.into_inner().expect("finish an in-memory tar")
    }

    /// The finished tar, gzip-compressed.
    pub fn tar_gz(&mut self) -> Vec<u8> {
        gzip(&self.tar())
    }
}

/// Gzip-compresses bytes.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// A layer as pushed: its blob, media type and uncompressed digest.
#[derive(Debug, Clone)]
pub struct TestLayer {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: Digest,
}

impl TestLayer {
    pub fn plain(tar: Vec<u8>) -> TestLayer {
        TestLayer {
            diff_id: Digest::of_bytes(&tar),
            blob: tar,
            media_type: OCI_LAYER_TAR,
        }
    }
    pub fn gzip(tar: Vec<u8>) -> TestLayer {
        TestLayer {
            diff_id: Digest::of_bytes(&tar),
            blob: gzip(&tar),
            media_type: OCI_LAYER_GZIP,
        }
    }
    pub fn zstd(tar: Vec<u8>) -> TestLayer {
        let blob = zstd::encode_all(&tar[..], 3).expect("zstd into memory");
        TestLayer {
            diff_id: Digest::of_bytes(&tar),
            blob,
            media_type: OCI_LAYER_ZSTD,
        }
    }
}

/// A complete test image: layers, config and manifest bytes.
#[derive(Debug)]
pub struct TestImage {
    pub layers: Vec<TestLayer>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl TestImage {
    /// An image with a fixed runtime config (Env, WorkingDir `/work`,
    /// Entrypoint `/bin/sh -c`, Cmd `echo hi`, User `1000:1000`).
    pub fn new(layers: Vec<TestLayer>, arch: &str) -> TestImage {
        let config = json!({
            "Env": ["PATH=/usr/bin:/bin", "GREETING=hello"],
            "WorkingDir": "/work",
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "User": "1000:1000",
        });
        TestImage::with_config(layers, arch, config)
    }

    /// An image with this runtime config (`{"Env": [...], "Cmd": [...]}`).
    pub fn with_config(
        layers: Vec<TestLayer>,
        arch: &str,
        runtime: serde_json::Value,
    ) -> TestImage {
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
        })
        .to_string()
        .into_bytes();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": Digest::of_bytes(&config).to_string(), "size": config.len()},
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type, "digest": Digest::of_bytes(&l.blob).to_string(), "size": l.blob.len()
            })).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        TestImage {
            layers,
            config,
            manifest,
        }
    }

    pub fn digest(&self) -> Digest {
        Digest::of_bytes(&self.manifest)
    }

    /// Writes it as an OCI image layout directory, named `ref_name`.
    pub fn write_oci_layout(&self, dir: &Path, ref_name: &str) {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("mkdir");
        let put = |bytes: &[u8]| {
            std::fs::write(blobs.join(Digest::of_bytes(bytes).hex()), bytes).expect("write blob");
        };
        put(&self.config);
        put(&self.manifest);
        for l in &self.layers {
            put(&l.blob);
        }
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("write");
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": OCI_MANIFEST,
                "digest": self.digest().to_string(),
                "size": self.manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": ref_name},
            }],
        });
        std::fs::write(dir.join("index.json"), index.to_string()).expect("write index");
    }

    /// Writes it as a legacy `docker save` archive tagged `tags`, layers
    /// uncompressed as `<n>/layer.tar`.
    pub fn write_docker_archive(&self, path: &Path, tags: &[&str]) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            tar.append_data(&mut h, name, data).expect("append");
        };
        let config_name = format!("{}.json", Digest::of_bytes(&self.config).hex());
        let mut layer_names = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let plain = match l.media_type {
                OCI_LAYER_GZIP => {
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(&l.blob[..])
                        .read_to_end(&mut out)
                        .expect("gunzip");
                    out
                }
                OCI_LAYER_ZSTD => zstd::decode_all(&l.blob[..]).expect("zstd"),
                _ => l.blob.clone(),
            };
            let name = format!("{i}/layer.tar");
            add(&name, &plain);
            layer_names.push(name);
        }
        add(&config_name, &self.config);
        let manifest = json!([{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]);
        add("manifest.json", manifest.to_string().as_bytes());
        std::fs::write(path, tar.into_inner().expect("tar")).expect("write archive");
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}

/// The address in the registry's "listening on ADDR" log line, read from
/// `log` for at most [`REGISTRY_START`]; the rest of the log is drained
/// (and dropped) so that the registry never blocks on a full pipe.
fn listening_address(log: std::process::ChildStderr) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("nook-test-registry-log".into())
        .spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(log)) {
                let Ok(line) = line else { break };
                if let Some((_, rest)) = line.split_once("listening on ") {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| *c != '"' && !c.is_whitespace())
                        .collect();
                    let _ = tx.send(addr);
                }
            }
        })
        .expect("spawn the registry log reader");
    rx.recv_timeout(REGISTRY_START).ok()
}

/// Debian's `docker-registry` on a loopback port it chose itself, killed
/// on drop.
#[derive(Debug)]
pub struct Registry {
    pub host: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// How long the registry may take to say where it listens.
const REGISTRY_START: Duration = Duration::from_secs(20);

impl Registry {
    /// Starts one, or returns `None` (after printing why) when the binary
    /// is missing. `htpasswd` enables basic auth with that file's content.
    ///
    /// The registry binds port 0 and its log names the port: a port picked
    /// here and handed over could be taken meanwhile by another test's
    /// registry or any outgoing connection (tests run side by side).
    pub fn start(htpasswd: Option<&str>) -> Option<Registry> {
        let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(bin) = bin else {
            eprintln!(
                "skipping: docker-registry is not installed (apt-get install docker-registry)"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let auth = match htpasswd {
            Some(content) => {
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, content).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: nook-test\n    path: {}\n",
                    path.display()
                )
            }
            None => String::new(),
        };
        // `info` for the line that names the address; no access log.
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{auth}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let mut child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start docker-registry");
        let log = child.stderr.take().expect("registry log");
        let host = match listening_address(log) {
            Some(host) => host,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("docker-registry did not say where it listens within {REGISTRY_START:?}");
            }
        };
        let registry = Registry {
            host,
            child,
            _dir: dir,
        };
        registry.wait_ready();
        Some(registry)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + REGISTRY_START;
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(&self.host) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not start on {}", self.host);
    }

    fn client(&self) -> oci_client::Client {
        oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(vec![self.host.clone()]),
            ..Default::default()
        })
    }

    /// Pushes `image` as `repo:tag` with oci-client, byte for byte (so its
    /// manifest digest is `image.digest()`).
    pub fn push(
        &self,
        repo_tag: &str,
        image: &TestImage,
        auth: &oci_client::secrets::RegistryAuth,
    ) {
        let reference: oci_client::Reference = format!("{}/{repo_tag}", self.host)
            .parse()
            .expect("reference");
        let client = self.client();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            client
                .auth(&reference, auth, oci_client::RegistryOperation::Push)
                .await
                .expect("auth for push");
            let mut blobs: Vec<&[u8]> = image.layers.iter().map(|l| &l.blob[..]).collect();
            blobs.push(&image.config);
            for blob in blobs {
                let digest = Digest::of_bytes(blob).to_string();
                client
                    .push_blob(&reference, blob.to_vec(), &digest)
                    .await
                    .expect("push blob");
            }
            client
                .push_manifest_raw(
                    &reference,
                    image.manifest.clone(),
                    http::HeaderValue::from_static(OCI_MANIFEST),
                )
                .await
                .expect("push manifest");
        });
    }

    /// Pushes an index over already pushed manifests as `repo:tag`.
    pub fn push_index(&self, repo_tag: &str, entries: &[(&TestImage, &str)]) {
        let reference: oci_client::Reference = format!("{}/{repo_tag}", self.host)
            .parse()
            .expect("reference");
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries.iter().map(|(img, arch)| json!({
                "mediaType": OCI_MANIFEST,
                "digest": img.digest().to_string(),
                "size": img.manifest.len(),
                "platform": {"architecture": arch, "os": "linux"},
            })).collect::<Vec<_>>(),
        });
        let client = self.client();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let anon = oci_client::secrets::RegistryAuth::Anonymous;
            client
                .auth(&reference, &anon, oci_client::RegistryOperation::Push)
                .await
                .expect("auth for push");
            client
                .push_manifest_raw(
                    &reference,
                    index.to_string().into_bytes(),
                    http::HeaderValue::from_static(OCI_INDEX),
                )
                .await
                .expect("push index");
        });
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
