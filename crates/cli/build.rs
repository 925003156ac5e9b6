//! Links the `nook` binary with packed relative relocations (`DT_RELR`):
//! a PIE's start-up applies ~50,000 relative relocations before `main`,
//! and as plain `.rela.dyn` entries they take 0.8 MB that the dynamic
//! loader reads on every start; packed, a few kilobytes.
fn main() {
    println!("cargo:rustc-link-arg-bin=nook=-Wl,-z,pack-relative-relocs");
}
