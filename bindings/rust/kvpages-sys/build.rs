//! Finds libkvpages without any crate from a registry:
//! 1. `KVPAGES_LIB_DIR` (a directory holding libkvpages.so) and optionally
//!    `KVPAGES_INCLUDE_DIRS` (colon-separated, for the layout test), or
//! 2. the `pkg-config` command (`PKG_CONFIG_PATH` for a non-system prefix), requiring
//!    version >= 1.1 (kvp_attention) and < 2.
use std::env;
use std::process::Command;

fn pkg_config(args: &[&str]) -> Option<String> {
    let out = Command::new("pkg-config").args(args).arg("kvpages").output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=KVPAGES_LIB_DIR");
    println!("cargo:rerun-if-env-changed=KVPAGES_INCLUDE_DIRS");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let mut include_dirs: Vec<String> = Vec::new();
    if let Ok(dir) = env::var("KVPAGES_LIB_DIR") {
        println!("cargo:rustc-link-search=native={dir}");
        if let Ok(inc) = env::var("KVPAGES_INCLUDE_DIRS") {
            include_dirs.extend(inc.split(':').filter(|s| !s.is_empty()).map(String::from));
        }
    } else {
        let version = pkg_config(&["--modversion"]).unwrap_or_else(|| {
            panic!("kvpages-sys: libkvpages not found: set KVPAGES_LIB_DIR or make `pkg-config kvpages` work")
        });
        if pkg_config(&["--atleast-version=1.1", "--max-version=1.99.99"]).is_none() {
            panic!("kvpages-sys: found kvpages {version}, need 1.x with x >= 1");
        }
        for flag in pkg_config(&["--libs-only-L"]).unwrap_or_default().split_whitespace() {
            if let Some(dir) = flag.strip_prefix("-L") {
                println!("cargo:rustc-link-search=native={dir}");
            }
        }
        for flag in pkg_config(&["--cflags-only-I"]).unwrap_or_default().split_whitespace() {
            if let Some(dir) = flag.strip_prefix("-I") {
                include_dirs.push(dir.to_string());
            }
        }
    }
    println!("cargo:rustc-link-lib=dylib=kvpages");
    // For the layout test (it compiles a C probe against the same headers).
    println!("cargo:rustc-env=KVPAGES_SYS_INCLUDE_DIRS={}", include_dirs.join(":"));
    println!("cargo:include={}", include_dirs.join(":"));
}
