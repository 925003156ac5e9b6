//! [`prepare`] and [`refresh`]: the fast path through the index, and the
//! slow path under the cache lock.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rustix::fs::{flock, FlockOperation};

use crate::config::{Assets, AssetsConfig, KernelSource, Layout, PrepareWork};
use crate::error::{cache_err, AssetsError};
use crate::gc;
use crate::index::{request_key, FileStamp, Index, IndexEntry};
use crate::initramfs::{self, InitramfsInputs, InitramfsSpec};
use crate::kernel::{self, ResolvedKernel};
use crate::modules::read_module_file;
use crate::progress::Progress;

/// Returns a kernel and initramfs for `cfg`, doing only the work that is
/// missing.
///
/// The fast path (everything prepared before, no input changed) reads one
/// small index file and `stat`s a few files: no hashing, no apt, no lock.
/// Otherwise the slow path takes the cache lock, reuses what verifies by
/// content hash, downloads and extracts the kernel package if needed (the
/// Debian package is pinned to what apt resolved last; see [`refresh`]),
/// and writes the initramfs if no intact one with the same content address
/// exists. [`Assets::work`] says what was done.
pub fn prepare(cfg: &AssetsConfig) -> Result<Assets, AssetsError> {
    let started = Instant::now();
    let layout = Layout::new(&cfg.home);
    let key = request_key(cfg);
    if let Some(assets) = fast_path(&layout, &key) {
        tracing::debug!(
            target: "nook::assets",
            elapsed_us = started.elapsed().as_micros() as u64,
            "assets reused from index: downloaded nothing, built nothing"
        );
        return Ok(assets);
    }
    slow_path(cfg, &layout, &key, false)
}

/// Like [`prepare`], but first asks apt again which versioned package the
/// configured Debian package stands for (`nook setup --update`), fetching a
/// newer kernel if there is one. Local kernels are simply re-checked.
pub fn refresh(cfg: &AssetsConfig) -> Result<Assets, AssetsError> {
    let layout = Layout::new(&cfg.home);
    slow_path(cfg, &layout, &request_key(cfg), true)
}

fn fast_path(layout: &Layout, key: &str) -> Option<Assets> {
    Index::load(&layout.index())
        .lookup(key)
        .map(|entry| entry.assets.clone())
}

/// Exclusive `flock` on the cache's lock file, released on drop.
#[derive(Debug)]
struct CacheLock {
    _file: File,
}

impl CacheLock {
    fn acquire(path: &Path) -> Result<Self, AssetsError> {
        let err = |source: std::io::Error| AssetsError::Lock {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(err)?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            tracing::info!(target: "nook::assets", lock = %path.display(), "waiting for another nook process preparing assets");
            flock(&file, FlockOperation::LockExclusive).map_err(|e| err(e.into()))?;
        }
        Ok(Self { _file: file })
    }
}

fn slow_path(
    cfg: &AssetsConfig,
    layout: &Layout,
    key: &str,
    refresh: bool,
) -> Result<Assets, AssetsError> {
    std::fs::create_dir_all(&layout.home).map_err(cache_err("create directory", &layout.home))?;
    let _lock = CacheLock::acquire(&layout.lock())?;
    if !refresh {
        // Another process may have finished the same work while we waited.
        if let Some(assets) = fast_path(layout, key) {
            tracing::debug!(target: "nook::assets", "assets prepared by another process");
            return Ok(assets);
        }
    }
    clear_tmp(&layout.tmp())?;
    let progress = Progress::new(cfg.progress);

    let kernel: ResolvedKernel = match &cfg.kernel {
        KernelSource::Debian { package } => {
            kernel::debian(layout, package, &cfg.modules, refresh, &progress)?
        }
        KernelSource::Local {
            kernel,
            modules_dir,
        } => kernel::local(kernel, modules_dir.as_deref(), &cfg.modules)?,
    };

    // Stamp inputs before reading them: a file changed in between then
    // fails the next fast-path check instead of hiding behind a new stamp.
    let mut stamps = kernel.stamps.clone();
    let (agent_stamp, agent) = read_input(
        &cfg.agent,
        "guest agent",
        "build it with scripts/setup or set NOOK_AGENT to a static nook-agent",
    )?;
    if let Some(problem) = crate::elf::dynamic_executable_problem(&agent) {
        return Err(AssetsError::AgentNotStatic {
            path: cfg.agent.clone(),
            problem,
        });
    }
    let (busybox_stamp, busybox) = read_input(
        &cfg.busybox,
        "static busybox",
        "install it (apt-get install busybox-static) or pass --busybox FILE",
    )?;
    stamps.extend([agent_stamp, busybox_stamp]);
    let applets = initramfs::busybox_applets(&cfg.busybox)?;
    let mut modules = Vec::new();
    for m in &kernel.modules {
        let data = read_module_file(&m.path).map_err(|source| AssetsError::Modules {
            release: kernel.release.clone(),
            source,
        })?;
        modules.push((m.file_name.clone(), Arc::new(data)));
    }
    let spec = InitramfsSpec::new(&InitramfsInputs {
        agent: Arc::new(agent),
        busybox: Arc::new(busybox),
        applets,
        release: kernel.release.clone(),
        modules,
    });
    let (initramfs, built) = initramfs::ensure(&spec, &layout.initramfs(), &progress)?;
    stamps.push(FileStamp::of(&initramfs).map_err(cache_err("stat", &initramfs))?);

    let assets = Assets {
        kernel: kernel.image.clone(),
        kernel_config: kernel.config.clone(),
        initramfs,
        kernel_release: kernel.release.clone(),
        modules: kernel.modules.iter().map(|m| m.name.clone()).collect(),
        work: PrepareWork::default(),
    };
    let mut index = Index::load(&layout.index());
    index.upsert(IndexEntry {
        key: key.to_owned(),
        assets: assets.clone(),
        stamps,
    });
    index.save(&layout.index())?;
    gc::collect(layout, &index, gc::GRACE);
    let work = PrepareWork {
        verified: true,
        downloaded: kernel.downloaded,
        built_initramfs: built,
    };
    tracing::info!(
        target: "nook::assets",
        kernel = %assets.kernel.display(),
        initramfs = %assets.initramfs.display(),
        release = %assets.kernel_release,
        modules = ?assets.modules,
        downloaded = work.downloaded,
        built_initramfs = work.built_initramfs,
        "assets prepared"
    );
    Ok(Assets { work, ..assets })
}

fn read_input(
    path: &Path,
    what: &'static str,
    hint: &'static str,
) -> Result<(FileStamp, Vec<u8>), AssetsError> {
    let err = |source| AssetsError::Input {
        what,
        path: path.to_owned(),
        hint,
        source,
    };
    let stamp = FileStamp::of(path).map_err(err)?;
    let data = std::fs::read(path).map_err(err)?;
    Ok((stamp, data))
}

/// Removes leftovers of interrupted runs. Only called under the lock, when
/// no other process can be using the scratch directory.
fn clear_tmp(tmp: &Path) -> Result<(), AssetsError> {
    match std::fs::read_dir(tmp) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                if let Err(e) = removed {
                    tracing::warn!(target: "nook::assets", path = %path.display(), error = %e, "cannot remove leftover");
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(tmp).map_err(cache_err("create directory", tmp))
        }
        Err(e) => Err(cache_err("list", tmp)(e)),
    }
}
