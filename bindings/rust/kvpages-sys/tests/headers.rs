//! The declarations of this crate against the installed C headers (the ones it links with):
//! every function, struct, typedef and numeric constant of `include/kvpages/*.h` must have an
//! identical counterpart in `src/lib.rs`, and the crate must declare nothing the headers lack.
//!
//! The headers are parsed (comments and preprocessor lines removed, then the `KVP_API … KVP_CALL
//! kvp_x(…);` declarations, `typedef`s and `#define KVP_*` lines), every C type is mapped to the
//! Rust type it must be declared as (`const T *` → `*const T`, `T **` → `*mut *mut T`,
//! `int64_t` → `i64`, `size_t` → `usize`, function pointers → `Option<unsafe extern "C" fn(…)>`,
//! …), and compared with the declarations parsed from `src/lib.rs`. The constants' values are
//! printed by a C probe compiled against the headers. A header change that this crate does not
//! follow fails here with a list of every difference.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

const RUST_SOURCE: &str = include_str!("../src/lib.rs");

/// `#define`s that are not numeric constants of the API: export and calling-convention macros,
/// version macros (the crate's own `KVP_VERSION_NUMBER` is the version it was written against,
/// checked against the library by `kvp_check_abi`), the build's feature flags, and initialisers.
const NOT_CONSTANTS: &[&str] = &[
    "KVP_API",
    "KVP_CALL",
    "KVP_BEGIN_DECLS",
    "KVP_END_DECLS",
    "KVP_VERSION_MAJOR",
    "KVP_VERSION_MINOR",
    "KVP_VERSION_PATCH",
    "KVP_VERSION_NUMBER",
    "KVP_VERSION_STRING",
    "KVP_HAS_CUDA",
];

fn header_texts() -> Vec<(String, String)> {
    let mut files = BTreeMap::new();
    for dir in env!("KVPAGES_SYS_INCLUDE_DIRS").split(':').filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir).join("kvpages");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".h") {
                files.insert(name, std::fs::read_to_string(e.path()).unwrap());
            }
        }
    }
    assert!(files.contains_key("status.h") && files.contains_key("plugin.h"),
            "no kvpages headers under KVPAGES_SYS_INCLUDE_DIRS={:?}", env!("KVPAGES_SYS_INCLUDE_DIRS"));
    files.into_iter().collect()
}

fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("/*").into_iter().chain(rest.find("//")).min() {
        out.push_str(&rest[..i]);
        out.push(' ');
        rest = if rest[i..].starts_with("/*") {
            &rest[i + rest[i..].find("*/").expect("unterminated comment") + 2..]
        } else {
            &rest[i + rest[i..].find('\n').unwrap_or(rest.len() - i)..]
        };
    }
    out.push_str(rest);
    out
}

/// (code without preprocessor lines, preprocessor lines with continuations joined)
fn split_preprocessor(text: &str) -> (String, Vec<String>) {
    let (mut code, mut pp) = (String::new(), Vec::new());
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with('#') {
            let mut full = line.to_string();
            while full.ends_with('\\') {
                full.pop();
                full.push_str(lines.next().unwrap_or(""));
            }
            pp.push(full);
        } else {
            code.push_str(line);
            code.push('\n');
        }
    }
    (code, pp)
}

/// Maps a C type (tokens, no name) to the Rust type spelling of this crate.
fn rust_type(c: &str) -> String {
    let spaced = c.replace('*', " * ");
    let (mut leading_const, mut base, mut stars): (bool, &str, Vec<bool>) = (false, "", Vec::new());
    for tok in spaced.split_whitespace() {
        match tok {
            "const" => match stars.last_mut() {
                Some(s) => *s = true,
                None => leading_const = true,
            },
            "*" => stars.push(false),
            "struct" | "KVP_CALL" => {}
            t => base = t,
        }
    }
    let mut ty = match base {
        "void" if stars.is_empty() => return "()".into(),
        "void" | "CUstream_st" => "c_void",
        "char" => "c_char",
        "int" => "c_int",
        "uint8_t" => "u8",
        "uint16_t" => "u16",
        "uint32_t" => "u32",
        "int32_t" => "i32",
        "uint64_t" => "u64",
        "int64_t" => "i64",
        "size_t" => "usize",
        "double" => "f64",
        "float" => "f32",
        other => other,
    }
    .to_string();
    let mut pointee_const = leading_const;
    for s in stars {
        ty = format!("{}{}", if pointee_const { "*const " } else { "*mut " }, ty);
        pointee_const = s;
    }
    ty
}

/// Splits at commas outside brackets.
fn split_top(s: &str) -> Vec<String> {
    let (mut parts, mut depth, mut cur) = (Vec::new(), 0i32, String::new());
    for ch in s.chars() {
        match ch {
            '(' | '<' | '[' => depth += 1,
            '>' if cur.ends_with('-') => {} // `->`
            ')' | '>' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        parts.push(cur);
    }
    parts.into_iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
}

/// A C parameter list ("const char *name, size_t cap" or "void") as Rust types.
fn c_params(params: &str) -> Vec<String> {
    let params = params.trim();
    if params.is_empty() || params == "void" {
        return Vec::new();
    }
    split_top(params)
        .iter()
        .map(|p| {
            let p = p.replace('*', " * ");
            let toks: Vec<&str> = p.split_whitespace().collect();
            rust_type(&toks[..toks.len() - 1].join(" ")) // the last token is the parameter's name
        })
        .collect()
}

/// A C function signature as the Rust spelling compared: "(T1,T2)->R".
fn signature(ret: &str, params: &str) -> String {
    let r = rust_type(ret);
    let arrow = if r == "()" { String::new() } else { format!("->{r}") };
    normalize(&format!("({}){arrow}", c_params(params).join(",")))
}

/// Whitespace removed and `name:` parameter labels dropped (Rust fn pointer types may name them).
fn normalize(s: &str) -> String {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let s = s.replace(",)", ")").replace(",>", ">"); // rustfmt's trailing commas
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i > start {
            let label = i < b.len() && b[i] == b':' && b.get(i + 1) != Some(&b':') && (start == 0 || b[start - 1] != b':');
            if label {
                i += 1;
            } else {
                out.push_str(&s[start..i]);
            }
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn fn_pointer(ret: &str, params: &str) -> String {
    let sig = signature(ret, params);
    format!("Option<unsafeextern\"C\"fn{sig}>")
}

/// Text up to the `close` that matches the `open` at `text[0]`.
fn balanced(text: &str, open: char, close: char) -> &str {
    let mut depth = 0;
    for (i, ch) in text.char_indices() {
        if ch == open {
            depth += 1;
        } else if ch == close {
            depth -= 1;
            if depth == 0 {
                return &text[1..i];
            }
        }
    }
    panic!("unbalanced {open}{close}")
}

#[derive(Default)]
struct Decls {
    functions: BTreeMap<String, String>,
    structs: BTreeMap<String, Vec<(String, String)>>,
    opaque: BTreeSet<String>,
    aliases: BTreeMap<String, String>,
    constants: BTreeSet<String>,
}

fn c_field(f: &str) -> (String, String) {
    if let Some(i) = f.find("(KVP_CALL *").or_else(|| f.find("(*")) {
        let after = &f[i..];
        let name_part = balanced(after, '(', ')');
        let name = name_part.trim_start_matches("KVP_CALL").trim().trim_start_matches('*').trim().to_string();
        let rest = &after[name_part.len() + 2..];
        let params = balanced(rest.trim_start(), '(', ')');
        return (name, fn_pointer(&f[..i], params));
    }
    let (decl, array) = match f.find('[') {
        Some(i) => (&f[..i], Some(f[i + 1..f.find(']').unwrap()].trim())),
        None => (f, None),
    };
    let spaced = decl.replace('*', " * ");
    let toks: Vec<&str> = spaced.split_whitespace().collect();
    let name = toks[toks.len() - 1].to_string();
    let ty = rust_type(&toks[..toks.len() - 1].join(" "));
    let ty = match array {
        Some(n) => format!("[{ty};{n}]"),
        None => ty,
    };
    (name, normalize(&ty))
}

fn parse_typedef(stmt: &str, d: &mut Decls) {
    let s = stmt.trim_start_matches("typedef").trim();
    if let (true, Some(open)) = (s.starts_with("struct"), s.find('{')) {
        let body = balanced(&s[open..], '{', '}');
        let name = s[open + body.len() + 2..].trim().to_string();
        let fields = body.split(';').map(str::trim).filter(|f| !f.is_empty()).map(c_field).collect();
        d.structs.insert(name, fields);
    } else if let Some(i) = s.find("(KVP_CALL *") {
        let after = &s[i..];
        let name = balanced(after, '(', ')').trim_start_matches("KVP_CALL").trim().trim_start_matches('*').trim();
        let rest = &after[after.find(')').unwrap() + 1..];
        let params = balanced(rest.trim_start(), '(', ')');
        d.aliases.insert(name.to_string(), fn_pointer(&s[..i], params));
    } else if s.starts_with("struct") && !s.contains('*') {
        d.opaque.insert(s.split_whitespace().last().unwrap().to_string());
    } else {
        let spaced = s.replace('*', " * ");
        let toks: Vec<&str> = spaced.split_whitespace().collect();
        let name = toks[toks.len() - 1];
        d.aliases.insert(name.to_string(), normalize(&rust_type(&toks[..toks.len() - 1].join(" "))));
    }
}

fn parse_headers() -> Decls {
    let mut d = Decls::default();
    for (_, text) in header_texts() {
        let (code, pp) = split_preprocessor(&strip_comments(&text));
        for line in pp {
            let mut toks = line.trim_start_matches('#').trim_start().splitn(3, char::is_whitespace);
            let (directive, name, value) = (toks.next(), toks.next().unwrap_or(""), toks.next().unwrap_or("").trim());
            let object_like = !name.contains('(') && !value.is_empty();
            let numeric = value.trim_start_matches('(').starts_with(|c: char| c.is_ascii_digit());
            if directive == Some("define") && name.starts_with("KVP_") && !name.starts_with("KVP__") && object_like
                && numeric && !NOT_CONSTANTS.contains(&name) {
                d.constants.insert(name.to_string());
            }
        }
        let mut rest = code.as_str();
        while let Some(i) = rest.find("KVP_API ") {
            let decl = &rest[i + 8..];
            let end = decl.find(';').unwrap();
            let decl_text = &decl[..end];
            let call = decl_text.find("KVP_CALL").expect("KVP_API without KVP_CALL");
            let after = &decl_text[call + 8..];
            let open = after.find('(').unwrap();
            let name = after[..open].trim().to_string();
            let params = balanced(&after[open..], '(', ')');
            d.functions.insert(name, signature(&decl_text[..call], params));
            rest = &decl[end..];
        }
        let mut rest = code.as_str();
        while let Some(i) = rest.find("typedef ") {
            let stmt = &rest[i..];
            let (mut depth, mut end) = (0, 0);
            for (j, ch) in stmt.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ';' if depth == 0 => {
                        end = j;
                        break;
                    }
                    _ => {}
                }
            }
            parse_typedef(&stmt[..end], &mut d);
            rest = &stmt[end..];
        }
    }
    d
}

fn parse_rust() -> Decls {
    let mut d = Decls::default();
    let mut rest = RUST_SOURCE;
    while let Some(i) = rest.find("pub fn ") {
        let decl = &rest[i + 7..];
        let end = decl.find(';').unwrap();
        let open = decl.find('(').unwrap();
        let name = decl[..open].trim().to_string();
        d.functions.insert(name, normalize(&decl[open..end]));
        rest = &decl[end..];
    }
    let mut rest = RUST_SOURCE;
    while let Some(i) = rest.find("pub struct ") {
        let decl = &rest[i + 11..];
        let open = decl.find('{').unwrap();
        let name = decl[..open].trim().to_string();
        let body = balanced(&decl[open..], '{', '}');
        if body.trim().starts_with("_private") {
            d.opaque.insert(name);
        } else {
            let fields = split_top(body)
                .iter()
                .map(|f| {
                    let f = f.trim_start_matches("pub ");
                    let colon = f.find(':').unwrap();
                    (f[..colon].trim().to_string(), normalize(&f[colon + 1..]))
                })
                .collect();
            d.structs.insert(name, fields);
        }
        rest = &decl[open..];
    }
    let mut rest = RUST_SOURCE;
    while let Some(i) = rest.find("pub type ") {
        let decl = &rest[i + 9..];
        let end = decl.find(';').unwrap();
        let eq = decl.find('=').unwrap();
        d.aliases.insert(decl[..eq].trim().to_string(), normalize(&decl[eq + 1..end]));
        rest = &decl[end..];
    }
    d
}

fn compare<V: PartialEq + std::fmt::Debug>(what: &str, c: &BTreeMap<String, V>, rust: &BTreeMap<String, V>,
                                          rust_only_ok: &[&str]) -> Vec<String> {
    let mut diffs = Vec::new();
    for (name, cv) in c {
        match rust.get(name) {
            None => diffs.push(format!("{what} {name}: in the headers, not declared in kvpages-sys")),
            Some(rv) if rv != cv => diffs.push(format!("{what} {name}:\n    header: {cv:?}\n    rust:   {rv:?}")),
            _ => {}
        }
    }
    for name in rust.keys().filter(|n| !c.contains_key(*n) && !rust_only_ok.contains(&n.as_str())) {
        diffs.push(format!("{what} {name}: declared in kvpages-sys, not in the headers"));
    }
    diffs
}

fn assert_none(diffs: Vec<String>) {
    assert!(diffs.is_empty(), "{} differences from the headers:\n{}", diffs.len(), diffs.join("\n"));
}

#[test]
fn every_function_is_declared_with_the_header_signature() {
    let (c, rust) = (parse_headers(), parse_rust());
    assert!(c.functions.len() >= 91 && c.functions.contains_key("kvp_convert"), "header parse found {} functions",
            c.functions.len());
    assert_none(compare("function", &c.functions, &rust.functions, &[]));
}

#[test]
fn every_struct_has_the_header_fields_and_types() {
    let (c, rust) = (parse_headers(), parse_rust());
    let dlpack = ["DLDevice", "DLDataType", "DLTensor", "DLManagedTensor"]; // dlpack/dlpack.h: tests/layout.rs
    let mut diffs = compare("struct", &c.structs, &rust.structs, &dlpack);
    for name in c.opaque.symmetric_difference(&rust.opaque) {
        diffs.push(format!("opaque handle {name}: declared on one side only"));
    }
    assert_none(diffs);
}

#[test]
fn every_typedef_is_declared_with_the_header_type() {
    let (c, rust) = (parse_headers(), parse_rust());
    assert_none(compare("typedef", &c.aliases, &rust.aliases, &[]));
}

#[test]
fn every_constant_has_the_header_value() {
    let c = parse_headers();
    let rust: BTreeMap<String, i128> = kvpages_sys::CONSTANTS.iter().map(|(n, v)| (n.to_string(), *v)).collect();
    let names: Vec<&String> = c.constants.iter().collect();
    let probe: Vec<String> =
        names.iter().map(|n| format!("printf(\"%lld\\n\", (long long)({n}));")).collect();
    let values = run_probe(&probe.join("\n"));
    let header: BTreeMap<String, i128> =
        names.iter().zip(values).map(|(n, v)| (n.to_string(), v)).collect();
    assert!(header.len() > 80, "header parse found {} constants", header.len());
    assert_none(compare("constant", &header, &rust, &[]));
}

/// Compiles and runs `main` statements against the headers; returns the printed integers.
fn run_probe(body: &str) -> Vec<i128> {
    let dir = std::env::temp_dir().join(format!("kvpages-sys-headers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, exe) = (dir.join("probe.c"), dir.join("probe"));
    let text = format!("#include <stdio.h>\n#include <kvpages.h>\n#include <kvpages/plugin.h>\n\
                        int main(void) {{\n{body}\nreturn 0; }}\n");
    std::fs::write(&src, text).unwrap();
    let mut cc = Command::new("cc");
    cc.arg("-std=c99");
    for d in env!("KVPAGES_SYS_INCLUDE_DIRS").split(':').filter(|d| !d.is_empty()) {
        cc.arg("-I").arg(d);
    }
    let status = cc.arg(&src).arg("-o").arg(&exe).status().expect("cc not found");
    assert!(status.success(), "compiling the C constant probe failed");
    let out = Command::new(&exe).output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    String::from_utf8(out.stdout).unwrap().split_whitespace().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn the_parser_maps_c_types_as_documented() {
    assert_eq!(rust_type("const char *"), "*const c_char");
    assert_eq!(rust_type("const int32_t **"), "*mut *const i32");
    assert_eq!(rust_type("struct DLManagedTensor **"), "*mut *mut DLManagedTensor");
    assert_eq!(rust_type("void"), "()");
    assert_eq!(signature("kvp_status", "const void *src, kvp_dtype t, size_t n"),
               "(*constc_void,kvp_dtype,usize)->kvp_status");
    assert_eq!(normalize("Option<unsafe extern \"C\" fn(a: *mut u8, b: usize) -> i32>"),
               "Option<unsafeextern\"C\"fn(*mutu8,usize)->i32>");
}
