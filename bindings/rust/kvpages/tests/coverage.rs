//! Coverage: every public C function (`python3 tests/abi/gen_api.py --list`, the list the C
//! completeness test uses) is called by the safe crate's source, so it has a safe counterpart,
//! or is listed below as left out on purpose, with the reason. A new C function fails this test
//! until it is bound or listed.
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// Functions the safe crate leaves to `kvpages::sys`, and why.
const LEFT_OUT: &[(&str, &str)] = &[
    (
        "kvp_set_host_allocator",
        "C-level allocator hooks take callbacks that must not unwind and a user_data that must \
         outlive every object allocated meanwhile; Rust programs choose their allocator with \
         #[global_allocator], and raw users call sys::kvp_set_host_allocator",
    ),
    ("kvp_get_api", "the dlopen function table is for plugin hosts; this crate links the library directly"),
];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

fn c_functions() -> BTreeSet<String> {
    let out = Command::new("python3")
        .arg(repo_root().join("tests/abi/gen_api.py"))
        .arg("--list")
        .output()
        .expect("python3 tests/abi/gen_api.py --list");
    assert!(out.status.success(), "gen_api.py --list failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

fn safe_crate_source() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut text = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().extension().map_or(false, |x| x == "rs") {
            text.push_str(&std::fs::read_to_string(e.path()).unwrap());
        }
    }
    text
}

#[test]
fn every_c_function_has_a_safe_counterpart_or_a_reason() {
    let functions = c_functions();
    assert!(functions.len() >= 91 && functions.contains("kvp_convert"), "{} functions listed", functions.len());
    let source = safe_crate_source();
    let left_out: BTreeSet<&str> = LEFT_OUT.iter().map(|(f, _)| *f).collect();
    let missing: Vec<&String> = functions
        .iter()
        .filter(|f| !left_out.contains(f.as_str()) && !source.contains(&format!("sys::{f}(")))
        .collect();
    assert!(missing.is_empty(), "C functions with no counterpart in the kvpages crate (bind them or add them to \
             LEFT_OUT with a reason): {missing:?}");
    let stale: Vec<&&str> = left_out.iter().filter(|f| !functions.contains(**f) || source.contains(&format!("sys::{f}("))).collect();
    assert!(stale.is_empty(), "LEFT_OUT entries that are bound or no longer exist: {stale:?}");
}
