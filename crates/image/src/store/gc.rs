//! Garbage collection: images no name points at, blobs no image uses,
//! leftovers of interrupted work.

use std::collections::BTreeSet;
use std::fs;

use super::{remove_path, GcReport, ImageStore};
use crate::digest::Digest;
use crate::error::{io_err, ImageError};

impl ImageStore {
    /// Removes images no name points at, names of missing images, blobs no
    /// image uses, stale Debian cache entries and leftovers of interrupted
    /// work. Waits for running pulls and builds to finish first.
    pub fn gc(&self) -> Result<GcReport, ImageError> {
        let _lock = self.exclusive_lock()?;
        let mut report = GcReport::default();
        let present: BTreeSet<Digest> = self.all_image_digests()?.into_iter().collect();
        self.update_refs(|refs| {
            refs.retain(|_, d| Digest::parse(d).is_ok_and(|d| present.contains(&d)));
        })?;
        let named: BTreeSet<String> = self.read_refs()?.into_values().collect();
        let mut keep_blobs = BTreeSet::new();
        for digest in &present {
            let dir = self.image_dir(digest);
            let record = self.read_record(digest)?;
            let Some(record) = record.filter(|r| named.contains(&r.digest)) else {
                report.bytes_freed += remove_path(&dir)?;
                report.images_removed += 1;
                continue;
            };
            keep_blobs.insert(digest.hex().to_owned());
            keep_blobs.insert(
                record
                    .config_digest
                    .trim_start_matches("sha256:")
                    .to_owned(),
            );
            for l in &record.layers {
                keep_blobs.insert(l.trim_start_matches("sha256:").to_owned());
            }
        }
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(io_err("read directory", &blobs))? {
            let entry = entry.map_err(io_err("read directory", &blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep_blobs.contains(&name) {
                report.bytes_freed += remove_path(&entry.path())?;
                report.blobs_removed += 1;
            }
        }
        for (dir, count) in [("tmp", true), ("locks", false)] {
            let dir = self.root.join(dir);
            for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
                let entry = entry.map_err(io_err("read directory", &dir))?;
                let freed = remove_path(&entry.path())?;
                if count {
                    report.bytes_freed += freed;
                    report.temp_removed += 1;
                }
            }
        }
        // Temporaries of atomic writes a killed process left beside
        // `refs.json` and `layout`.
        for entry in fs::read_dir(&self.root).map_err(io_err("read directory", &self.root))? {
            let entry = entry.map_err(io_err("read directory", &self.root))?;
            if nook_fsutil::is_temp_name(&entry.file_name()) {
                report.bytes_freed += remove_path(&entry.path())?;
                report.temp_removed += 1;
            }
        }
        crate::debian::gc_cache(self, &named)?;
        Ok(report)
    }
}
