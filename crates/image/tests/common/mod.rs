//! Shared fixtures for the integration tests: a throwaway image store,
//! test images built from layer tars, a loopback `docker-registry`, and
//! `debugfs` to look inside ext4 images.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nook_image::manifest::{
    OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use nook_image::testing::{gzip, LayerBuilder};
use nook_image::{Digest, ImageStore};
use serde_json::json;

pub fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = ImageStore::open(&dir.path().join("images")).expect("open store");
    (dir, store)
}

/// A layer as pushed: its blob, media type and uncompressed digest.
#[derive(Clone)]
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
pub struct TestImage {
    pub layers: Vec<TestLayer>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl TestImage {
    pub fn new(layers: Vec<TestLayer>, arch: &str) -> TestImage {
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/bin:/bin", "GREETING=hello"],
                "WorkingDir": "/work",
                "Entrypoint": ["/bin/sh", "-c"],
                "Cmd": ["echo hi"],
                "User": "1000:1000",
            },
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
}

/// The image the registry and import tests share: three layers (gzip,
/// gzip, zstd) with a whiteout of a file and of a directory, an opaque
/// directory, an absolute symlink, a hard link and an owned file.
pub fn sample_image() -> TestImage {
    let l1 = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/marker", b"marker-v1\n", 0o644)
        .file("etc/removed", b"to be whited out\n", 0o644)
        .dir("bin", 0o755)
        .file("bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
        .symlink("bin/sh", "/bin/tool")
        .hardlink("bin/tool-link", "bin/tool")
        .file("gone-dir/inner", b"x", 0o644)
        .file("opq/old1", b"old", 0o644)
        .file("opq/sub/old2", b"old", 0o644)
        .file_owned("home/user/owned", b"mine", 1000, 1000)
        .tar();
    let l2 = LayerBuilder::new()
        .file("etc/marker", b"marker-v2\n", 0o644)
        .whiteout("etc", "removed")
        .whiteout("", "gone-dir")
        .dir("opq", 0o755)
        .opaque("opq")
        .file("opq/new", b"new", 0o644)
        .tar();
    let l3 = LayerBuilder::new()
        .dir("work", 0o755)
        .file("usr/share/l3", b"from a zstd layer", 0o644)
        .tar();
    TestImage::new(
        vec![
            TestLayer::gzip(l1),
            TestLayer::gzip(l2),
            TestLayer::zstd(l3),
        ],
        "amd64",
    )
}

/// Checks the unpacked tree of [`sample_image`].
pub fn check_sample_tree(root: &Path) {
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::read(root.join("etc/marker")).expect("marker"),
        b"marker-v2\n"
    );
    assert!(
        !root.join("etc/removed").exists(),
        "whiteout did not remove etc/removed"
    );
    assert!(
        !root.join("etc/.wh.removed").exists(),
        "whiteout marker left behind"
    );
    assert!(
        !root.join("gone-dir").exists(),
        "whiteout did not remove gone-dir"
    );
    let mut opq: Vec<String> = std::fs::read_dir(root.join("opq"))
        .expect("opq")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    opq.sort();
    assert_eq!(opq, ["new"], "opaque directory kept lower content");
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).expect("symlink"),
        Path::new("/bin/tool")
    );
    let tool = std::fs::metadata(root.join("bin/tool")).expect("tool");
    let link = std::fs::metadata(root.join("bin/tool-link")).expect("tool-link");
    assert_eq!(tool.ino(), link.ino(), "hard link not kept");
    assert_eq!(tool.mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::read(root.join("usr/share/l3")).expect("l3"),
        b"from a zstd layer"
    );
    if rustix::process::geteuid().is_root() {
        let owned = std::fs::metadata(root.join("home/user/owned")).expect("owned");
        assert_eq!((owned.uid(), owned.gid()), (1000, 1000));
    }
}

/// Runs `debugfs -R CMD IMG`; `None` when debugfs is not installed.
pub fn debugfs(img: &Path, cmd: &str) -> Option<(String, String)> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(cmd)
        .arg(img)
        .output()
        .ok()?;
    Some((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Checks the ext4 image of [`sample_image`] with debugfs.
pub fn check_sample_ext4(img: &Path) {
    let Some((marker, _)) = debugfs(img, "cat /etc/marker") else {
        eprintln!(
            "skipping the debugfs checks: debugfs is not installed (apt-get install e2fsprogs)"
        );
        return;
    };
    assert_eq!(marker, "marker-v2\n");
    let (_, err) = debugfs(img, "stat /etc/removed").expect("debugfs");
    assert!(err.contains("not found"), "whiteout-ed file in ext4: {err}");
    let (link, _) = debugfs(img, "stat /bin/sh").expect("debugfs");
    assert!(
        link.contains("Type: symlink") && link.contains("/bin/tool"),
        "{link}"
    );
    let (tool, _) = debugfs(img, "stat /bin/tool").expect("debugfs");
    assert!(tool.contains("Links: 2"), "hard link lost in ext4: {tool}");
    let (opq, _) = debugfs(img, "ls /opq").expect("debugfs");
    assert!(opq.contains("new") && !opq.contains("old1"), "{opq}");
    if rustix::process::geteuid().is_root() {
        let (owned, _) = debugfs(img, "stat /home/user/owned").expect("debugfs");
        assert!(
            owned.contains("User:  1000") && owned.contains("Group:  1000"),
            "{owned}"
        );
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}

/// Debian's `docker-registry` on a free loopback port, killed on drop.
pub struct Registry {
    pub host: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts one, or returns `None` (after printing why) when the binary
    /// is missing. `htpasswd` enables basic auth with that file's content.
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
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
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
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{auth}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            host,
            child,
            _dir: dir,
        };
        registry.wait_ready();
        Some(registry)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
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

/// Every blob file in the store hashes to its name.
pub fn assert_blobs_verify(store_root: &Path) {
    for entry in std::fs::read_dir(store_root.join("blobs/sha256")).expect("blobs") {
        let entry = entry.expect("entry");
        let bytes = std::fs::read(entry.path()).expect("read blob");
        assert_eq!(
            Digest::of_bytes(&bytes).hex(),
            entry.file_name().to_string_lossy(),
            "corrupt blob"
        );
    }
}

pub fn dir_is_empty(path: &Path) -> bool {
    std::fs::read_dir(path)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

pub fn store_size(root: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if m.is_dir() {
            std::fs::read_dir(p)
                .map(|d| d.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0)
        } else {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512
        }
    }
    walk(root)
}
