package kvpages

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"io"
	"runtime"
	"runtime/cgo"
	"sync"
	"unsafe"
)

// SaveOptions choose what a save writes; nil or the zero value writes every page in 1 MiB chunks.
type SaveOptions struct {
	// PageIDs are the pages to write, in this order (each in [0, NumPages), no duplicates).
	// nil writes every page; a non-nil empty slice writes the config and no page.
	PageIDs []int32
	// ChunkBytes is the payload per checksummed chunk; 0 = 1 MiB.
	ChunkBytes uint64
}

// LoadOptions are the options of the functions that create a cache from a blob.
type LoadOptions struct {
	Device Device // where the new cache lives; the zero value is the CPU
	// MaxCacheBytes refuses blobs whose cache would take more (ErrFormatMismatch); 0 = 1 GiB
	// plus the input's size when known, math.MaxUint64 = no limit.
	MaxCacheBytes uint64
}

// saveArgs are the C arguments of a selection: pointer, count, selected?, chunk size.
func (o *SaveOptions) args() (*C.int32_t, C.uint32_t, C.int, C.uint64_t) {
	if o == nil {
		return nil, 0, 0, 0
	}
	sel := C.int(0)
	if o.PageIDs != nil {
		sel = 1
	}
	return (*C.int32_t)(slicePtr(o.PageIDs)), C.uint32_t(len(o.PageIDs)), sel, C.uint64_t(o.ChunkBytes)
}

func (o *LoadOptions) args() (C.int32_t, C.int32_t, C.uint64_t) {
	if o == nil {
		return C.KVP_DEVICE_CPU, 0, 0
	}
	return C.int32_t(o.Device.ctype()), C.int32_t(o.Device.ID), C.uint64_t(o.MaxCacheBytes)
}

func (o *SaveOptions) check() error {
	if o != nil && uint64(len(o.PageIDs)) > uint64(^uint32(0)) {
		return newError(ErrInvalidArgument, "%d page ids: at most 2^32-1", len(o.PageIDs))
	}
	return nil
}

// SerializedSize is the exact size of the blob Serialize would write (kvp_serialized_size).
func (c *Cache) SerializedSize(opts *SaveOptions) (int, error) {
	if err := opts.check(); err != nil {
		return 0, err
	}
	ids, n, sel, chunk := opts.args()
	var out C.size_t
	err := c.do(func(p *C.kvp_cache) C.kvp_status { return C.kvpgo_serialized_size(p, ids, n, sel, chunk, &out) })
	runtime.KeepAlive(opts)
	return int(out), err
}

// Serialize writes the cache (or the chosen pages) into a new byte slice (kvp_serialize).
// The page ids are passed to C for the call only.
func (c *Cache) Serialize(opts *SaveOptions) ([]byte, error) {
	size, err := c.SerializedSize(opts)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, size)
	ids, n, sel, chunk := opts.args()
	var written C.size_t
	err = c.do(func(p *C.kvp_cache) C.kvp_status {
		return C.kvpgo_serialize(p, ids, n, sel, chunk, slicePtr(buf), C.size_t(len(buf)), &written)
	})
	runtime.KeepAlive(opts)
	if err != nil {
		return nil, err
	}
	return buf[:written], nil
}

// SaveFile writes the cache (or the chosen pages) to path, replacing the file atomically
// (kvp_serialize_to_file). It is one C call and cannot be cancelled: use Save with an *os.File
// to cancel a long save through a context.
func (c *Cache) SaveFile(path string, opts *SaveOptions) error {
	if err := opts.check(); err != nil {
		return err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	ids, n, sel, chunk := opts.args()
	err := c.do(func(p *C.kvp_cache) C.kvp_status { return C.kvpgo_serialize_to_file(p, ids, n, sel, chunk, cpath) })
	runtime.KeepAlive(opts)
	return err
}

// stream is the state of one Save or Load behind the C callbacks.
type stream struct {
	ctx context.Context
	w   io.Writer
	r   io.Reader
	err error // the first error of the writer, the reader or the context
}

// run calls f with a handle to s for the callbacks, and returns s's error before f's.
func (s *stream) run(f func(h C.uintptr_t) error) error {
	h := cgo.NewHandle(s)
	defer h.Delete()
	err := f(C.uintptr_t(h))
	if s.err != nil {
		return s.err
	}
	return err
}

//export kvpgoWrite
func kvpgoWrite(data unsafe.Pointer, size C.size_t, h C.uintptr_t) C.int32_t {
	s := cgo.Handle(h).Value().(*stream)
	if err := s.ctx.Err(); err != nil {
		s.err = err
		return 1
	}
	if _, err := s.w.Write(unsafe.Slice((*byte)(data), int(size))); err != nil {
		s.err = err
		return 2
	}
	return 0
}

//export kvpgoRead
func kvpgoRead(dst unsafe.Pointer, size C.size_t, readOut *C.size_t, h C.uintptr_t) C.int32_t {
	s := cgo.Handle(h).Value().(*stream)
	buf := unsafe.Slice((*byte)(dst), int(size))
	for {
		if err := s.ctx.Err(); err != nil {
			s.err = err
			return 1
		}
		n, err := s.r.Read(buf)
		if n > 0 || err == io.EOF {
			*readOut = C.size_t(n)
			return 0
		}
		if err != nil {
			s.err = err
			return 2
		}
	}
}

// Save streams the cache (or the chosen pages) to w, one chunk at a time
// (kvp_serialize_to_writer). ctx is checked before every piece; once it is done, Save stops
// and returns ctx.Err(). An error of w is returned as it is. What w received before an error
// is an incomplete blob that every reader rejects.
func (c *Cache) Save(ctx context.Context, w io.Writer, opts *SaveOptions) error {
	if err := opts.check(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ids, n, sel, chunk := opts.args()
	s := &stream{ctx: ctx, w: w}
	err := s.run(func(h C.uintptr_t) error {
		return c.do(func(p *C.kvp_cache) C.kvp_status { return C.kvpgo_serialize_to_writer(p, ids, n, sel, chunk, h) })
	})
	runtime.KeepAlive(opts)
	return err
}

// Deserialize creates a cache from a blob in memory (kvp_deserialize_new): the blob's config,
// its pages at their ids, every other page zero. opts nil = a CPU cache, default size limit.
func Deserialize(blob []byte, opts *LoadOptions) (*Cache, error) {
	dt, id, max := opts.args()
	var out *C.kvp_cache
	err := call(func() C.kvp_status {
		return C.kvpgo_deserialize_new(slicePtr(blob), C.size_t(len(blob)), dt, id, max, &out)
	})
	if err != nil {
		return nil, err
	}
	return ownCache(out), nil
}

// Load creates a cache from a blob read from r (kvp_deserialize_new_from_reader), reading
// exactly the blob's bytes. ctx is checked before every read; once it is done, Load stops and
// returns ctx.Err(). An error of r is returned as it is.
func Load(ctx context.Context, r io.Reader, opts *LoadOptions) (*Cache, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dt, id, max := opts.args()
	var out *C.kvp_cache
	s := &stream{ctx: ctx, r: r}
	err := s.run(func(h C.uintptr_t) error {
		return call(func() C.kvp_status { return C.kvpgo_deserialize_new_from_reader(h, dt, id, max, &out) })
	})
	if err != nil {
		if out != nil {
			C.kvp_cache_destroy(out)
		}
		return nil, err
	}
	return ownCache(out), nil
}

// LoadFile creates a cache from a blob file (kvp_deserialize_new_from_file); one C call.
func LoadFile(path string, opts *LoadOptions) (*Cache, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	dt, id, max := opts.args()
	var out *C.kvp_cache
	err := call(func() C.kvp_status { return C.kvpgo_deserialize_new_from_file(cpath, dt, id, max, &out) })
	if err != nil {
		return nil, err
	}
	return ownCache(out), nil
}

// DeserializeInto loads a blob's pages into this cache (kvp_deserialize_into): the blob's j-th
// page goes to dstPageIDs[j], or to its own id when dstPageIDs is empty. Every checksum is
// verified first: on any error the cache is unchanged.
func (c *Cache) DeserializeInto(blob []byte, dstPageIDs []int32) error {
	return c.do(func(p *C.kvp_cache) C.kvp_status {
		return C.kvp_deserialize_into(p, slicePtr(blob), C.size_t(len(blob)), (*C.int32_t)(slicePtr(dstPageIDs)),
			C.uint32_t(len(dstPageIDs)))
	})
}

// LoadInto loads the pages of a blob read from r into this cache
// (kvp_deserialize_into_from_reader), like DeserializeInto; ctx as for Load. The pages are
// staged and checked before the cache is written, so a cancelled load changes nothing.
func (c *Cache) LoadInto(ctx context.Context, r io.Reader, dstPageIDs []int32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s := &stream{ctx: ctx, r: r}
	return s.run(func(h C.uintptr_t) error {
		return c.do(func(p *C.kvp_cache) C.kvp_status {
			return C.kvpgo_deserialize_into_from_reader(p, h, (*C.int32_t)(slicePtr(dstPageIDs)), C.uint32_t(len(dstPageIDs)))
		})
	})
}

// LoadFileInto loads the pages of a blob file into this cache (kvp_deserialize_into_from_file).
func (c *Cache) LoadFileInto(path string, dstPageIDs []int32) error {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	return c.do(func(p *C.kvp_cache) C.kvp_status {
		return C.kvp_deserialize_into_from_file(p, cpath, (*C.int32_t)(slicePtr(dstPageIDs)), C.uint32_t(len(dstPageIDs)))
	})
}

// FormatFlagShard is the SerializedInfo.Flags bit of a blob holding one shard's slice
// (KVP_FORMAT_FLAG_SHARD, format 1.1, since 1.4).
const FormatFlagShard uint64 = C.KVP_FORMAT_FLAG_SHARD

// Blob is one blob of a set given to LoadShards: Data in memory, or else the file at Path.
type Blob struct {
	Data []byte
	Path string
}

// LoadShards loads a set of blobs whose slices may differ from this cache's: re-sharding
// (kvp_deserialize_shards_into, since 1.4). Every blob is checked and the set's coverage proven
// before the first byte is written: a missing shard, an overlap or another model is
// ErrFormatMismatch and changes nothing. Blobs in memory are copied to C memory for the call
// (cgo does not let C hold pointers into Go memory); give large sets as files.
func (c *Cache) LoadShards(blobs []Blob) error {
	n := len(blobs)
	base := (*C.kvp_blob_ref)(C.calloc(C.size_t(n+1), C.size_t(unsafe.Sizeof(C.kvp_blob_ref{}))))
	defer C.free(unsafe.Pointer(base))
	refs := unsafe.Slice(base, n)
	for i, b := range blobs {
		if b.Data != nil {
			refs[i].data = C.CBytes(b.Data)
			refs[i].size = C.size_t(len(b.Data))
			defer C.free(refs[i].data)
		} else {
			refs[i].path = C.CString(b.Path)
			defer C.free(unsafe.Pointer(refs[i].path))
		}
	}
	return c.do(func(p *C.kvp_cache) C.kvp_status {
		return C.kvp_deserialize_shards_into(p, base, C.uint32_t(n))
	})
}

// SerializedInfo are the header fields of a blob (kvp_serialized_info).
type SerializedInfo struct {
	FormatMajor, FormatMinor, HeaderSize, WriterVersion uint32
	Flags, HeaderChecksum                               uint64
	NumStoredPages, FirstPageID, LastPageID             uint64
	PageBytesPerLayer, ChunkBytes, NumChunks            uint64
	PayloadBytes, TotalBytes                            uint64
	Config                                              *Config   // the config stored in the blob (CPU)
	Shard                                               ShardInfo // since 1.4: the slice the blob holds
}

func serializedInfo(i *C.kvp_serialized_info) *SerializedInfo {
	return &SerializedInfo{FormatMajor: uint32(i.format_major), FormatMinor: uint32(i.format_minor),
		HeaderSize: uint32(i.header_size), WriterVersion: uint32(i.writer_version), Flags: uint64(i.flags),
		HeaderChecksum: uint64(i.header_checksum), NumStoredPages: uint64(i.num_stored_pages),
		FirstPageID: uint64(i.first_page_id), LastPageID: uint64(i.last_page_id),
		PageBytesPerLayer: uint64(i.page_bytes_per_layer), ChunkBytes: uint64(i.chunk_bytes),
		NumChunks: uint64(i.num_chunks), PayloadBytes: uint64(i.payload_bytes), TotalBytes: uint64(i.total_bytes),
		Config: &Config{raw: i.config, device: CPU}, Shard: shardInfo(&i.shard)}
}

func inspectFlags(verify bool) C.uint32_t {
	if verify {
		return C.KVP_INSPECT_VERIFY
	}
	return 0
}

// Inspect reads and checks a blob's header (kvp_serialized_inspect); with verify, the whole
// blob must be present and every checksum is verified.
func Inspect(blob []byte, verify bool) (*SerializedInfo, error) {
	var info C.kvp_serialized_info
	info.struct_size = C.uint32_t(unsafe.Sizeof(info))
	err := call(func() C.kvp_status {
		return C.kvp_serialized_inspect(slicePtr(blob), C.size_t(len(blob)), inspectFlags(verify), &info)
	})
	if err != nil {
		return nil, err
	}
	return serializedInfo(&info), nil
}

// InspectFile is Inspect on a file, streaming (kvp_serialized_inspect_file).
func InspectFile(path string, verify bool) (*SerializedInfo, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var info C.kvp_serialized_info
	info.struct_size = C.uint32_t(unsafe.Sizeof(info))
	if err := call(func() C.kvp_status { return C.kvp_serialized_inspect_file(cpath, inspectFlags(verify), &info) }); err != nil {
		return nil, err
	}
	return serializedInfo(&info), nil
}

var misuse struct {
	sync.Mutex
	fn func(what string)
}

// SetMisuseHandler installs fn as the process-wide misuse handler (kvp_set_misuse_handler): the
// library calls it with a description when it detects API misuse (a destroyed or foreign
// handle, ...), before returning the error. nil restores the default (no handler). Install it
// before other goroutines use the library; fn must not call back into kvpages.
func SetMisuseHandler(fn func(what string)) {
	misuse.Lock()
	misuse.fn = fn
	misuse.Unlock()
	on := C.int(0)
	if fn != nil {
		on = 1
	}
	C.kvpgo_set_misuse_handler(on)
}

//export kvpgoMisuse
func kvpgoMisuse(what *C.char) {
	misuse.Lock()
	fn := misuse.fn
	misuse.Unlock()
	if fn != nil {
		fn(C.GoString(what))
	}
}
