package kvpages

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// leftOut are the public C functions the Go binding deliberately does not bind, with the reason.
var leftOut = map[string]string{
	"kvp_get_api": "the dlopen function table is for plugin hosts; cgo links every function directly",
	"kvp_set_host_allocator": "a Go allocator would be called from the library's worker threads for every allocation " +
		"and could not hand Go memory to C to keep; Go programs use the built-in allocator",
	"kvp_store_create": "a plug-in store's callbacks would call back into Go from under the store's lock on any " +
		"thread (cgo exports plus a handle registry for the Go backend); the Go binding offers the memory and " +
		"directory stores, and an engine's own backend plugs in through the C API",
	"kvp_last_error_message": "the binding reads messages with kvp_last_error_copy (into Go memory, on the failing " +
		"thread); every *Error carries the message",
}

// publicFunctions are the functions the C headers declare (KVP_API ... KVP_CALL kvp_name(...)).
func publicFunctions(t *testing.T) []string {
	t.Helper()
	headers, _ := filepath.Glob(filepath.Join("..", "..", "..", "include", "kvpages", "*.h"))
	if len(headers) == 0 {
		t.Fatal("no headers under ../../../include/kvpages (run from the source tree)")
	}
	decl := regexp.MustCompile(`KVP_API\s+[^;{}]*?KVP_CALL\s+(kvp_\w+)\s*\(`)
	var names []string
	for _, h := range headers {
		text, err := os.ReadFile(h)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range decl.FindAllStringSubmatch(string(text), -1) {
			names = append(names, m[1])
		}
	}
	return names
}

// bindingSource is the binding's code (Go and C, cgo preambles included) without Go comments.
func bindingSource(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	files, _ := filepath.Glob("*.go")
	cfiles, _ := filepath.Glob("*.c")
	for _, f := range append(files, cfiles...) {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		text, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(text), "\n") {
			if !strings.HasPrefix(strings.TrimSpace(line), "//") {
				b.WriteString(line + "\n")
			}
		}
	}
	return b.String()
}

// Every public C function is called by the binding or listed in leftOut with a reason.
func TestEveryCFunctionHasAGoCounterpart(t *testing.T) {
	names := publicFunctions(t)
	if len(names) < 90 {
		t.Fatalf("only %d declarations found: the scan is broken", len(names))
	}
	src := bindingSource(t)
	declared := map[string]bool{}
	for _, n := range names {
		declared[n] = true
		called := regexp.MustCompile(`\b` + n + `\(`).MatchString(src)
		reason, skipped := leftOut[n]
		switch {
		case called && skipped:
			t.Errorf("%s is bound but listed as left out (%s)", n, reason)
		case !called && !skipped:
			t.Errorf("%s has no Go counterpart: bind it or list it in leftOut with a reason", n)
		}
	}
	for n := range leftOut {
		if !declared[n] {
			t.Errorf("leftOut lists %s, which the headers no longer declare", n)
		}
	}
}
