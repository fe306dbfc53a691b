// Package kvpages is the Go binding of kvpages, a paged KV cache for LLM inference (cgo).
//
// It links the C library through pkg-config (`#cgo pkg-config: kvpages`; set PKG_CONFIG_PATH
// for a non-system prefix) and needs Go 1.19 or newer. bindings/go/README.md says how to use it
// from your own module (a replace directive pointing at this directory).
//
// # What it covers
//
// Configuration and planning (NewConfig, Config.Plan, budgeting from the device the cache will
// live on), caches on the CPU or a CUDA device (NewCache), shards and cache groups (NewShard,
// NewCacheGroup: every shard of a sharded config, written with one call), views with typed
// reads and writes of every dtype (View, ReadView, WriteView), writing a batch (Concatenate,
// ConcatenateRequests),
// the batch builder (BuildMetadata, which remembers its decode-first row order so that
// ConcatenateRequests and PackRequests place every request's tokens for you), the page pool
// (Pool), serialization of a whole cache or chosen pages to bytes, files and io.Writer /
// io.Reader (Cache.Save, Load, ...), Inspect, JSON (Config and Metadata implement
// json.Marshaler), DLPack export (DLPackTensor), asynchronous device errors, version checks and
// interop with C code through Cache.Handle / FromHandle.
//
// # Handles and errors
//
// Handles are released exactly once: by Close (explicit, preferred) or by a finalizer when a
// handle becomes unreachable. A CacheGroup's Shard is a Cache borrowed from the group: its Close
// only detaches it and the group's Close destroys it. Every call that can fail runs with its
// goroutine locked to the OS thread, so the library's thread-local error message is read on the
// thread that failed; errors
// are *Error values carrying the Status code, its name and that message. Status is itself an
// error, and *Error unwraps to it, so errors.Is(err, kvpages.ErrInvalidArgument) works.
//
// # Memory
//
// Slices handed to the library (keys, values, queries, page ids, byte buffers) are passed to C
// for the duration of one call, as the cgo pointer rules allow for memory that holds no Go
// pointers; they are not copied and not retained after the call returns. Nothing Go-owned is
// ever stored in C memory: descriptors that must point at caller data are built on the C side
// of the call.
package kvpages

/*
#cgo pkg-config: kvpages
#include <stdlib.h>
#include <string.h>
#include <kvpages.h>
#if KVP_VERSION_MAJOR != 1
#error "these bindings need kvpages 1.x headers"
#endif
#if KVP_VERSION_NUMBER < 10500
#error "these bindings need kvpages 1.5 or newer 1.x headers (storage tiers: Redis, sequence save and restore, store listing)"
#endif
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Status is a kvp_status code. It is an error (its message is the code's name), and every
// *Error unwraps to its Status, so errors.Is(err, ErrOutOfPages) compares codes.
type Status int32

// Status codes (KVP_ERR_*). Codes the binding does not name still come back as a Status.
const (
	ErrInvalidArgument   Status = C.KVP_ERR_INVALID_ARGUMENT
	ErrInvalidHandle     Status = C.KVP_ERR_INVALID_HANDLE
	ErrNotFound          Status = C.KVP_ERR_NOT_FOUND
	ErrVersionMismatch   Status = C.KVP_ERR_VERSION_MISMATCH
	ErrUnsupported       Status = C.KVP_ERR_UNSUPPORTED
	ErrBufferTooSmall    Status = C.KVP_ERR_BUFFER_TOO_SMALL
	ErrOutOfMemory       Status = C.KVP_ERR_OUT_OF_MEMORY
	ErrOutOfPages        Status = C.KVP_ERR_OUT_OF_PAGES
	ErrIO                Status = C.KVP_ERR_IO
	ErrDevice            Status = C.KVP_ERR_DEVICE
	ErrDeviceLost        Status = C.KVP_ERR_DEVICE_LOST
	ErrNoDevice          Status = C.KVP_ERR_NO_DEVICE
	ErrDeviceOutOfMemory Status = C.KVP_ERR_DEVICE_OUT_OF_MEMORY
	ErrFormatMagic       Status = C.KVP_ERR_FORMAT_MAGIC
	ErrFormatVersion     Status = C.KVP_ERR_FORMAT_VERSION
	ErrFormatTruncated   Status = C.KVP_ERR_FORMAT_TRUNCATED
	ErrFormatChecksum    Status = C.KVP_ERR_FORMAT_CHECKSUM
	ErrFormatCorrupt     Status = C.KVP_ERR_FORMAT_CORRUPT
	ErrFormatMismatch    Status = C.KVP_ERR_FORMAT_MISMATCH
	ErrInternal          Status = C.KVP_ERR_INTERNAL
	statusOK             Status = C.KVP_OK
)

// Error returns the code's name (kvp_status_name), e.g. "KVP_ERR_NOT_FOUND".
func (s Status) Error() string { return C.GoString(C.kvp_status_name(C.kvp_status(s))) }

// Error is a failed kvpages call: the status, its name and the library's message.
type Error struct {
	Status  Status // the kvp_status code
	Name    string // e.g. "KVP_ERR_INVALID_ARGUMENT"
	Message string // the library's detail message (or the binding's, for checks done in Go)
}

func (e *Error) Error() string { return e.Name + ": " + e.Message }

// Unwrap returns the Status, so errors.Is(err, ErrNotFound) and errors.As(err, &status) work.
func (e *Error) Unwrap() error { return e.Status }

// newError is an error found by the binding itself (before any C call).
func newError(s Status, format string, args ...any) *Error {
	return &Error{Status: s, Name: s.Error(), Message: fmt.Sprintf(format, args...)}
}

// call runs f locked to one OS thread and, on failure, reads that thread's message.
func call(f func() C.kvp_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	st := f()
	if st == C.KVP_OK {
		return nil
	}
	n := C.kvp_last_error_copy(nil, 0)
	buf := make([]byte, int(n)+1)
	C.kvp_last_error_copy((*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))
	s := Status(st)
	return &Error{Status: s, Name: s.Error(), Message: string(buf[:n])}
}

// HeaderVersion is the KVP_VERSION_NUMBER of the headers this package was compiled with.
const HeaderVersion = uint32(C.KVP_VERSION_NUMBER)

// Version is the loaded library's version string (kvp_version_string), e.g. "1.2.0".
func Version() string { return C.GoString(C.kvp_version_string()) }

// VersionNumber is the loaded library's version as MAJOR*10000 + MINOR*100 + PATCH.
func VersionNumber() uint32 { return uint32(C.kvp_version_number()) }

// BuildInfo describes the loaded library's build (kvp_build_info): version, revision,
// compiler, backends and the CPU instruction-set level in use.
func BuildInfo() string { return C.GoString(C.kvp_build_info()) }

// CheckABI fails with ErrVersionMismatch unless the loaded library is compatible with the
// headers this package was compiled with (kvp_check_abi).
func CheckABI() error { return CheckABIVersion(HeaderVersion) }

// CheckABIVersion is kvp_check_abi for any header version number.
func CheckABIVersion(headerVersion uint32) error {
	return call(func() C.kvp_status { return C.kvp_check_abi(C.uint32_t(headerVersion)) })
}
