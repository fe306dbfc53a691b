//! Gives this crate's binaries (examples, tests) an rpath to the directory of libkvpages that
//! kvpages-sys linked (`DEP_KVPAGES_LIBDIR`), so `cargo run --example` and `cargo test` work
//! from an install prefix with only `PKG_CONFIG_PATH` set. A program that depends on this
//! crate does the same with these lines in its own build.rs (Cargo applies link arguments only
//! to the package whose build script prints them):
//!
//! ```ignore
//! if let Ok(dir) = std::env::var("DEP_KVPAGES_LIBDIR") {
//!     println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
//! }
//! ```
//! (`DEP_KVPAGES_LIBDIR` reaches build scripts of crates that depend on kvpages-sys directly.)
use std::env;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_KVPAGES_LIBDIR");
    if let Ok(dir) = env::var("DEP_KVPAGES_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
