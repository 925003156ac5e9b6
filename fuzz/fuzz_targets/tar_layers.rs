//! Fuzzes unpacking an image layer (a tar stream: paths, hard and
//! symbolic links, whiteouts, opaque directories, devices) into an empty
//! root: never a panic, and nothing is written beside the root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nook_image::layer::{apply_layer, MemberPath};

fuzz_target!(|data: &[u8]| {
    let _ = MemberPath::parse(data);
    let Ok(outer) = tempfile::tempdir() else {
        return;
    };
    let root = outer.path().join("root");
    if std::fs::create_dir(&root).is_err() {
        return;
    }
    let _ = apply_layer(&root, data, None);
    let beside: Vec<_> = std::fs::read_dir(outer.path())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(
        beside,
        vec![std::ffi::OsString::from("root")],
        "a member escaped the root"
    );
});
