//! Builds an ext4 image from a directory and reports how tight it is:
//! `cargo run -p nook-image --example rootfs_size -- DIR OUT.ext4`.
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(out)) = (args.next(), args.next()) else {
        return Err("usage: rootfs_size DIR OUT.ext4".into());
    };
    let usage = nook_image::rootfs::measure_tree(dir.as_ref())?;
    let started = Instant::now();
    let size = nook_image::rootfs::build_ext4(dir.as_ref(), out.as_ref(), "measure")?;
    println!(
        "tree: {} inodes, {} data blocks ({} MiB)",
        usage.inodes,
        usage.blocks,
        (usage.blocks * 4096) >> 20
    );
    println!("ext4: {} MiB, built in {:?}", size >> 20, started.elapsed());
    Ok(())
}
