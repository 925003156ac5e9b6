//! Fuzzes the parsers of what a registry or an image archive hands nook:
//! manifests and indexes, image configs, descriptors, digests, media
//! types. Never a panic; what parses is self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nook_image::manifest::{
    parse_config, parse_manifest, select_linux_amd64, LayerCompression, Manifest,
};
use nook_image::Digest;

fuzz_target!(|data: &[u8]| {
    let layers = data.first().map_or(0, |b| usize::from(*b % 8));
    match parse_manifest(data) {
        Ok(Manifest::Image(m)) => {
            for d in m.layers.iter().chain(std::iter::once(&m.config)) {
                let _ = d.digest();
                let _ = d.size();
                let _ = LayerCompression::from_media_type(&d.media_type);
            }
        }
        Ok(Manifest::Index(i)) => {
            if let Ok(d) = select_linux_amd64(&i) {
                let _ = d.digest();
            }
        }
        Err(_) => {}
    }
    let _ = parse_config(data, layers);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(d) = Digest::parse(s) {
            assert_eq!(Digest::parse(&d.to_string()).ok(), Some(d));
        }
    }
});
