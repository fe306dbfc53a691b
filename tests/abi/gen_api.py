#!/usr/bin/env python3
"""Keeps the dlopen function table (kvp_api_v1) in step with the public headers.

The public headers are the source of truth: every `KVP_API <ret> KVP_CALL kvp_<name>(...);`
declaration in include/kvpages/*.h is a public function. This script

  * rewrites the generated sections of include/kvpages/plugin.h (the includes and the fields of
    kvp_api_v1), src/api/api_plugin.cpp (the table initialiser) and tests/package/api_names.h
    (an X-macro list used by the dlopen smoke test) -- with --write;
  * checks that those files are up to date, and that src/kvpages.map exports exactly the
    declared functions -- with --check (exit status 1 and a message naming each difference);
  * prints the declared function names, one per line -- with --list.

The table is append-only: the order of the fields already in plugin.h is kept, new functions are
appended at the end (in header order), and a function that disappeared from the headers is an
error (removing or reordering a field breaks every plugin host compiled against the table).
"""
import argparse
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
INC = os.path.join(ROOT, "include", "kvpages")
PLUGIN_H = os.path.join(INC, "plugin.h")
PLUGIN_CPP = os.path.join(ROOT, "src", "api", "api_plugin.cpp")
NAMES_H = os.path.join(ROOT, "tests", "package", "api_names.h")
MAP = os.path.join(ROOT, "src", "kvpages.map")

# Headers never scanned: the table header itself. dlpack.h is scanned, but its DLPack type is
# spelled as a struct tag in the table so plugin.h need not include <dlpack/dlpack.h>.
SKIP = {"plugin.h"}
NOT_INCLUDED = {"plugin.h", "dlpack.h"}
ENTRY_POINT = "kvp_get_api"

DECL = re.compile(r"KVP_API\s+(?P<ret>[^;{}]*?)\s*KVP_CALL\s+(?P<name>kvp_\w+)\s*\((?P<params>[^;{}]*?)\)\s*;",
                  re.S)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def header_files():
    names = sorted(f for f in os.listdir(INC) if f.endswith(".h") and f not in SKIP)
    # Stable, meaningful order: foundation headers first, then the rest alphabetically.
    first = ["status.h", "types.h", "config.h", "cache.h", "metadata.h", "ops.h", "pool.h", "serialize.h",
             "json.h", "device.h", "dlpack.h"]
    return [f for f in first if f in names] + [f for f in names if f not in first]


def declarations():
    """Returns [(header, name, ret, params)] in header order."""
    out = []
    seen = set()
    for h in header_files():
        with open(os.path.join(INC, h), encoding="utf-8") as fh:
            text = strip_comments(fh.read())
        for m in DECL.finditer(text):
            name = m.group("name")
            if name == ENTRY_POINT or name in seen:
                continue
            seen.add(name)
            ret = " ".join(m.group("ret").split())
            params = " ".join(m.group("params").split())
            params = re.sub(r"(?<!struct )\bDLManagedTensor\b", "struct DLManagedTensor", params)
            out.append((h, name, ret, params))
    return out


def read(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def section(text, tag):
    m = re.search(r"(BEGIN GENERATED %s[^\n]*\n)(.*?)(^[ \t]*(?:/\*|//) END GENERATED %s)" % (tag, tag), text, re.S | re.M)
    if not m:
        raise SystemExit("gen_api: marker 'BEGIN/END GENERATED %s' not found" % tag)
    return m


def replace_section(text, tag, body):
    m = section(text, tag)
    return text[: m.start(2)] + body + text[m.end(2):]


def current_order():
    if not os.path.exists(PLUGIN_H):
        return []
    body = section(read(PLUGIN_H), "TABLE").group(2)
    return re.findall(r"\(KVP_CALL \*(\w+)\)", body)


def exported(lib):
    import subprocess
    out = subprocess.run(["nm", "-D", "--defined-only", lib], check=True, capture_output=True, text=True).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.split()}


def ordered(decls, available=None):
    by_field = {name[len("kvp_"):]: (h, name, ret, params) for h, name, ret, params in decls}
    order = current_order()
    missing = [f for f in order if f not in by_field]
    if missing:
        raise SystemExit("gen_api: the table has fields whose functions are no longer declared: %s\n"
                         "(fields are never removed within a major version; see docs/abi-policy.md)"
                         % ", ".join(missing))
    new = [name[len("kvp_"):] for _, name, _, _ in decls
           if name[len("kvp_"):] not in order and (available is None or name in available)]
    return [by_field[f] for f in order + new]


def render(decls, available=None):
    table = ordered(decls, available)
    headers = []
    for h, _, _, _ in table:
        if h not in NOT_INCLUDED and h not in headers:
            headers.append(h)
    inc = "".join('#include "kvpages/%s"\n' % h for h in headers).rstrip("\n")
    fields = []
    for _, name, ret, params in table:
        field = name[len("kvp_"):]
        fields.append("  /** %s() */\n  %s(KVP_CALL *%s)(%s);" % (name, ret + " " if not ret.endswith("*") else ret, field, params))
    inits = "\n".join("    &%s," % name for _, name, _, _ in table)
    names = "\n".join("KVP_API_ENTRY(%s)" % name[len("kvp_"):] for _, name, _, _ in table)
    return inc, "\n".join(fields), inits, names, [n for _, n, _, _ in table]


def map_names():
    text = strip_comments(read(MAP))
    names = []
    for node in re.finditer(r"(\w+)\s*\{(.*?)\}", text, re.S):
        g = re.search(r"global:(.*?)(local:|$)", node.group(2), re.S)
        if g:
            names += [n.strip() for n in g.group(1).split(";") if n.strip()]
    return names


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help="regenerate the generated sections")
    ap.add_argument("--check", action="store_true", help="fail if anything is out of date")
    ap.add_argument("--list", action="store_true", help="print the declared functions")
    ap.add_argument("--lib", help="with --write: append only functions this built library exports "
                    "(declared but not yet implemented functions are left out)")
    args = ap.parse_args()
    decls = declarations()
    if args.list:
        for _, name, _, _ in decls:
            print(name)
        print(ENTRY_POINT)
        return 0
    available = exported(args.lib) if args.lib and args.write else None
    inc, fields, inits, names, table_names = render(decls, available)
    targets = [(PLUGIN_H, "INCLUDES", inc), (PLUGIN_H, "TABLE", fields), (PLUGIN_CPP, "TABLE", inits),
               (NAMES_H, "NAMES", names)]
    problems = []
    for path, tag, body in targets:
        text = read(path)
        new = replace_section(text, tag, body + "\n" if body else "")
        if new != text:
            if args.write:
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(new)
                print("gen_api: updated %s (%s)" % (os.path.relpath(path, ROOT), tag))
            else:
                problems.append("%s: generated section %s is out of date" % (os.path.relpath(path, ROOT), tag))
    if args.check:
        mapped = map_names()
        wildcard = [n for n in mapped if "*" in n]
        declared = {name for _, name, _, _ in decls} | {ENTRY_POINT}
        for n in sorted(declared - set(table_names) - {ENTRY_POINT}):
            problems.append("include/kvpages/plugin.h: public function %s is missing from kvp_api_v1" % n)
        if not wildcard:
            for n in sorted(declared - set(mapped)):
                problems.append("src/kvpages.map: declared function %s is not exported (add it to the "
                                "current version node)" % n)
            for n in sorted(set(mapped) - declared):
                problems.append("src/kvpages.map: %s is exported but not declared in any public header" % n)
        if problems:
            for p in problems:
                print("gen_api: " + p, file=sys.stderr)
            print("gen_api: run `python3 tests/abi/gen_api.py --write` (and edit src/kvpages.map by hand)",
                  file=sys.stderr)
            return 1
        print("gen_api: table, names and version script match %d declared functions" % len(declared))
    return 0


if __name__ == "__main__":
    sys.exit(main())
