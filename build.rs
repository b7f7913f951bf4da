//! Links the `corral` executable at a fixed address on x86-64 Linux (`-no-pie`). A
//! position-independent executable of this size applies some 20,000 relocations and copies
//! the pages they touch at every start, a few tenths of a millisecond, and every CLI command
//! and every `corral report` of an agent is a process start. Shared libraries stay
//! position-independent and randomized.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target == "x86_64-unknown-linux-gnu" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
