//! Finds (or builds) libkvpages without any crate from a registry. In this order:
//!
//! 1. feature `bundled`: builds the shared library from the kvpages source tree with CMake
//!    (`cmake` on PATH; no network; CUDA off; tests, benchmarks and docs off) under `OUT_DIR`,
//!    and links it there. The tree is the one this crate lives in (`../../..`), or
//!    `KVPAGES_SOURCE_DIR`.
//! 2. `KVPAGES_LIB_DIR` (a directory holding libkvpages.so) and optionally
//!    `KVPAGES_INCLUDE_DIRS` (colon-separated, for the header tests).
//! 3. the `pkg-config` command (`PKG_CONFIG_PATH=<prefix>/lib/pkgconfig` for a non-system
//!    prefix), requiring version >= 1.5 (storage tiers) and < 2.
//!
//! Every way links the shared library and adds an rpath to its directory
//! (`-Wl,-rpath,<libdir>`) to this crate's own test binaries. Cargo applies link arguments only
//! to the package that prints them, so the directory is also published to dependents as
//! `DEP_KVPAGES_LIBDIR`: the `kvpages` crate's build script (and a user's, see the crate docs)
//! turns it into the rpath of its binaries, examples and tests.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIN_VERSION: &str = "1.5";

fn main() {
    for var in ["KVPAGES_LIB_DIR", "KVPAGES_INCLUDE_DIRS", "KVPAGES_SOURCE_DIR", "PKG_CONFIG_PATH", "PKG_CONFIG_LIBDIR"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let (lib_dir, include_dirs) = if env::var_os("CARGO_FEATURE_BUNDLED").is_some() {
        build_bundled()
    } else if let Ok(dir) = env::var("KVPAGES_LIB_DIR") {
        let inc = env::var("KVPAGES_INCLUDE_DIRS").unwrap_or_default();
        (dir, inc.split(':').filter(|s| !s.is_empty()).map(String::from).collect())
    } else {
        find_with_pkg_config()
    };
    println!("cargo:rustc-link-search=native={lib_dir}");
    println!("cargo:rustc-link-lib=dylib=kvpages");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    println!("cargo:libdir={lib_dir}");
    // For the header and layout tests (they compile C probes against the same headers).
    println!("cargo:rustc-env=KVPAGES_SYS_INCLUDE_DIRS={}", include_dirs.join(":"));
    println!("cargo:include={}", include_dirs.join(":"));
}

/// Runs `pkg-config <args> kvpages`; None when the command is missing or fails.
fn pkg_config(args: &[&str]) -> Option<String> {
    let out = Command::new("pkg-config").args(args).arg("kvpages").output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Flags of one kind (`-L`, `-I`) from `pkg-config <query>`, prefix stripped.
fn pkg_config_dirs(query: &str, prefix: &str) -> Vec<String> {
    let flags = pkg_config(&[query]).unwrap_or_default();
    flags.split_whitespace().filter_map(|f| f.strip_prefix(prefix)).map(String::from).collect()
}

fn find_with_pkg_config() -> (String, Vec<String>) {
    let version = pkg_config(&["--modversion"]).unwrap_or_else(|| {
        panic!(
            "kvpages-sys: libkvpages not found: `pkg-config kvpages` failed (PKG_CONFIG_PATH={:?}).\n\
             Set PKG_CONFIG_PATH to the directory holding kvpages.pc of your install prefix, e.g.\n\
             \x20   PKG_CONFIG_PATH=/opt/kvpages/lib/pkgconfig cargo build\n\
             or set KVPAGES_LIB_DIR to the directory holding libkvpages.so, or build the library \
             from the source tree with the `bundled` feature.",
            env::var("PKG_CONFIG_PATH").unwrap_or_default()
        )
    });
    let max = "1.99.99";
    if pkg_config(&[&format!("--atleast-version={MIN_VERSION}"), &format!("--max-version={max}")]).is_none() {
        panic!("kvpages-sys: found kvpages {version} through pkg-config, need 1.x with x >= 5 (PKG_CONFIG_PATH picks the prefix)");
    }
    let lib_dir = pkg_config_dirs("--libs-only-L", "-L").into_iter().next().unwrap_or_else(|| {
        pkg_config(&["--variable=libdir"]).expect("kvpages-sys: kvpages.pc names no libdir")
    });
    (lib_dir, pkg_config_dirs("--cflags-only-I", "-I"))
}

/// The `bundled` feature: configure and build the `kvpages` target with CMake under OUT_DIR
/// (incremental: a rebuild only recompiles what changed). Returns the build directory (which
/// holds libkvpages.so) and the include directories (the source headers and the generated
/// version.h / features.h).
fn build_bundled() -> (String, Vec<String>) {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let source = env::var_os("KVPAGES_SOURCE_DIR").map(PathBuf::from).unwrap_or_else(|| manifest.join("../../.."));
    let source = source.canonicalize().unwrap_or(source);
    if !source.join("CMakeLists.txt").is_file() || !source.join("include/kvpages").is_dir() {
        panic!(
            "kvpages-sys (bundled): {} is not the kvpages source tree; set KVPAGES_SOURCE_DIR to it",
            source.display()
        );
    }
    for dir in ["CMakeLists.txt", "src", "include", "kernels", "cmake", "kvpages.pc.in"] {
        println!("cargo:rerun-if-changed={}", source.join(dir).display());
    }
    let build = PathBuf::from(env::var("OUT_DIR").unwrap()).join("kvpages-build");
    let mut configure = Command::new("cmake");
    configure.arg("-S").arg(&source).arg("-B").arg(&build);
    for def in [
        "CMAKE_BUILD_TYPE=Release",
        "KVPAGES_CUDA=OFF",
        "KVPAGES_BUILD_TESTS=OFF",
        "KVPAGES_BUILD_BENCH=OFF",
        "KVPAGES_BUILD_DOCS=OFF",
    ] {
        configure.arg(format!("-D{def}"));
    }
    run(configure, "configure");
    let jobs = env::var("NUM_JOBS").unwrap_or_else(|_| "2".into());
    let mut compile = Command::new("cmake");
    compile.arg("--build").arg(&build).args(["--target", "kvpages", "--parallel", &jobs]);
    run(compile, "build");
    let includes = vec![path_string(&source.join("include")), path_string(&build.join("include"))];
    (path_string(&build), includes)
}

fn run(mut cmd: Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("kvpages-sys (bundled): cannot run cmake to {what} the C library ({e}); install CMake >= 3.18")
    });
    if !status.success() {
        panic!("kvpages-sys (bundled): cmake failed to {what} the C library ({status}): {cmd:?}");
    }
}

fn path_string(p: &Path) -> String {
    p.to_str().expect("kvpages-sys: non-UTF-8 path").to_string()
}
