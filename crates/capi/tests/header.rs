//! include/nook.h is what cbindgen makes of this crate: regenerated here
//! and compared with the checked-in file. `NOOK_BLESS=1` rewrites it.

use std::path::Path;

const REGENERATE: &str = "NOOK_BLESS=1 cargo test -p nook-capi --test header";

#[test]
fn the_checked_in_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen cannot generate the header");
    let mut made = Vec::new();
    bindings.write(&mut made);
    let path = dir.join("include/nook.h");
    if std::env::var_os("NOOK_BLESS").is_some() {
        std::fs::write(&path, &made).expect("write include/nook.h");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    if checked_in != made {
        let old = String::from_utf8_lossy(&checked_in);
        let new = String::from_utf8_lossy(&made);
        let first = old
            .lines()
            .zip(new.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(old.lines().count().min(new.lines().count()));
        panic!(
            "crates/capi/include/nook.h is not what the code generates (first difference at line {}):\n  checked in: {:?}\n  generated:  {:?}\nregenerate it with `{REGENERATE}` and commit it",
            first + 1,
            old.lines().nth(first).unwrap_or("<end of file>"),
            new.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}
