package kvpages

/*
#include <stdlib.h>
#include <kvpages.h>
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// StoreKey is the 16-byte key of a block (kvp_store_key).
type StoreKey [16]byte

// StoreOptions are the options of the shipped stores (kvp_store_options); zero means default.
type StoreOptions struct {
	// NoSync: a directory store does not fsync its files (KVP_STORE_FLAG_NO_SYNC): faster; after a
	// power loss a block may be missing or damaged, which every read and Scrub detect.
	NoSync bool
	// TimeoutMs bounds every connect and command of a network store (OpenRedisStore; since 1.5),
	// 0 = the default, 1000 ms; a server that timed out is then skipped for a while (its calls fail
	// at once; see kvp_store_create_redis). The memory and directory stores ignore it.
	TimeoutMs uint32
}

// StoreStats are the content and counters of a store (kvp_store_stats).
type StoreStats struct {
	Blocks, Bytes, MaxBytes    int64 // held, and the bound
	Puts, Hits, Misses, Errors int64 // calls through this handle
	Evictions                  int64 // blocks dropped to stay within the bound
}

// ScrubReport is what Store.Scrub found (kvp_store_scrub_report).
type ScrubReport struct {
	BlocksChecked, BlocksDamaged, BytesFreed int64
}

// PoolTierStats are the counters of one storage tier of a pool (kvp_pool_tier_stats, since 1.4):
// pages looked up and restored (RestoredTokens), blocks rejected by the checks, evicted pages
// written (tier 0) and, since 1.5, Dropped: evicted pages not written because the write queue
// was full.
type PoolTierStats struct {
	NumTiers                                uint32
	Lookups, Hits, Misses, Rejected, Errors int64
	RestoredTokens, BytesRead               int64
	BlocksWritten, BytesWritten, Dropped    int64
}

// Store owns a kvp_store, a bounded store of blocks of bytes under 16-byte keys: where a Pool
// keeps the prefix pages it evicts (Pool.AddStore). A store is internally synchronised: several
// goroutines and pools may share one. Close the pools that use it first (a pool whose store
// is closed counts its accesses as tier errors).
type Store struct {
	p *C.kvp_store
}

func newStore(out *C.kvp_store) *Store {
	s := &Store{p: out}
	runtime.SetFinalizer(s, (*Store).Close)
	return s
}

// NewMemoryStore calls kvp_store_create_memory: blocks in host memory, at most maxBytes of them;
// over the bound the least recently used blocks are dropped.
func NewMemoryStore(maxBytes uint64) (*Store, error) {
	var out *C.kvp_store
	if err := call(func() C.kvp_status { return C.kvp_store_create_memory(C.uint64_t(maxBytes), nil, &out) }); err != nil {
		return nil, err
	}
	return newStore(out), nil
}

// OpenDirectoryStore calls kvp_store_create_directory: opens (creating it if missing) a store in
// a directory, one file per block, at most maxBytes of files; it survives restarts.
func OpenDirectoryStore(path string, maxBytes uint64, o StoreOptions) (*Store, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var opts C.kvp_store_options
	var out *C.kvp_store
	err := call(func() C.kvp_status {
		if st := C.kvp_store_options_init(&opts, C.uint32_t(unsafe.Sizeof(opts))); st != C.KVP_OK {
			return st
		}
		if o.NoSync {
			opts.flags |= C.KVP_STORE_FLAG_NO_SYNC
		}
		return C.kvp_store_create_directory(cpath, C.uint64_t(maxBytes), &opts, &out)
	})
	if err != nil {
		return nil, err
	}
	return newStore(out), nil
}

// OpenRedisStore calls kvp_store_create_redis (since 1.5): a store in a Redis server
// ("redis://HOST:PORT[/DB]") or a Redis Cluster ("redis+cluster://HOST:PORT[,HOST:PORT...]"),
// optionally followed by "?prefix=STR" (default "kvp:"), shared by every process that opens it.
// A server that fails or does not answer within o.TimeoutMs is ErrIO; a library built without
// Redis returns ErrUnsupported.
func OpenRedisStore(url string, o StoreOptions) (*Store, error) {
	curl := C.CString(url)
	defer C.free(unsafe.Pointer(curl))
	var opts C.kvp_store_options
	var out *C.kvp_store
	err := call(func() C.kvp_status {
		if st := C.kvp_store_options_init(&opts, C.uint32_t(unsafe.Sizeof(opts))); st != C.KVP_OK {
			return st
		}
		opts.timeout_ms = C.uint32_t(o.TimeoutMs)
		return C.kvp_store_create_redis(curl, &opts, &out)
	})
	if err != nil {
		return nil, err
	}
	return newStore(out), nil
}

// Close destroys the store (a directory store's files stay). Later calls on it return
// ErrInvalidHandle; Close again is a no-op.
func (s *Store) Close() error {
	if s.p == nil {
		return nil
	}
	h := s.p
	s.p = nil
	runtime.SetFinalizer(s, nil)
	return call(func() C.kvp_status { return C.kvp_store_destroy(h) })
}

// do runs one C call on the store's handle and keeps the store reachable until it returns.
func (s *Store) do(f func(h *C.kvp_store) C.kvp_status) error {
	h := s.ptr()
	if h == nil {
		return newError(ErrInvalidHandle, "store is closed")
	}
	err := call(func() C.kvp_status { return f(h) })
	runtime.KeepAlive(s)
	return err
}

func (k *StoreKey) c() *C.kvp_store_key { return (*C.kvp_store_key)(unsafe.Pointer(k)) }

// Put calls kvp_store_put: stores data under key, replacing the block there.
func (s *Store) Put(key StoreKey, data []byte) error {
	var p unsafe.Pointer
	if len(data) > 0 {
		p = unsafe.Pointer(&data[0])
	}
	err := s.do(func(h *C.kvp_store) C.kvp_status { return C.kvp_store_put(h, key.c(), p, C.size_t(len(data))) })
	runtime.KeepAlive(data)
	return err
}

// Get calls kvp_store_get: the block of key. A missing key is ErrNotFound (errors.Is); a damaged
// file of a directory store is an ErrFormat* error (the store has deleted it).
func (s *Store) Get(key StoreKey) ([]byte, error) {
	var block []byte
	for { // size, then fill; again if a larger block replaced it in between
		var size C.size_t
		var dst unsafe.Pointer
		if len(block) > 0 {
			dst = unsafe.Pointer(&block[0])
		}
		err := s.do(func(h *C.kvp_store) C.kvp_status {
			return C.kvp_store_get(h, key.c(), dst, C.size_t(len(block)), &size)
		})
		if e, ok := err.(*Error); ok && e.Status == ErrBufferTooSmall {
			block = make([]byte, int(size))
			continue
		}
		if err != nil {
			return nil, err
		}
		return block[:int(size)], nil
	}
}

// Exists calls kvp_store_exists: whether each of keys has a block (one batched query; not a use
// for the LRU).
func (s *Store) Exists(keys []StoreKey) ([]bool, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	found := make([]C.uint8_t, len(keys))
	err := s.do(func(h *C.kvp_store) C.kvp_status {
		return C.kvp_store_exists(h, keys[0].c(), C.size_t(len(keys)), &found[0])
	})
	runtime.KeepAlive(keys)
	if err != nil {
		return nil, err
	}
	out := make([]bool, len(keys))
	for i, f := range found {
		out[i] = f != 0
	}
	return out, nil
}

// Remove calls kvp_store_remove: removes the block of key (ErrNotFound if there is none).
func (s *Store) Remove(key StoreKey) error {
	return s.do(func(h *C.kvp_store) C.kvp_status { return C.kvp_store_remove(h, key.c()) })
}

// Stats calls kvp_store_get_stats.
func (s *Store) Stats() (StoreStats, error) {
	var st C.kvp_store_stats
	st.struct_size = C.uint32_t(unsafe.Sizeof(st))
	if err := s.do(func(h *C.kvp_store) C.kvp_status { return C.kvp_store_get_stats(h, &st) }); err != nil {
		return StoreStats{}, err
	}
	return StoreStats{
		Blocks: int64(st.blocks), Bytes: int64(st.bytes), MaxBytes: int64(st.max_bytes), Puts: int64(st.puts),
		Hits: int64(st.hits), Misses: int64(st.misses), Errors: int64(st.errors), Evictions: int64(st.evictions),
	}, nil
}

// Scrub calls kvp_store_scrub: reads and verifies every block, deleting damaged ones.
func (s *Store) Scrub() (ScrubReport, error) {
	var r C.kvp_store_scrub_report
	r.struct_size = C.uint32_t(unsafe.Sizeof(r))
	if err := s.do(func(h *C.kvp_store) C.kvp_status { return C.kvp_store_scrub(h, &r) }); err != nil {
		return ScrubReport{}, err
	}
	return ScrubReport{BlocksChecked: int64(r.blocks_checked), BlocksDamaged: int64(r.blocks_damaged),
		BytesFreed: int64(r.bytes_freed)}, nil
}

// listPage is the number of keys per kvp_store_list call of List.
const listPage = 256

// List calls kvp_store_list until the listing is complete (since 1.5): every key the store holds,
// a page at a time (the store locked per page, not across pages). A key present throughout
// appears at least once; keys put or removed meanwhile may or may not.
func (s *Store) List() ([]StoreKey, error) {
	var keys []StoreKey
	page := make([]StoreKey, listPage)
	var cursor C.uint64_t
	for {
		var n C.size_t
		err := s.do(func(h *C.kvp_store) C.kvp_status {
			return C.kvp_store_list(h, &cursor, page[0].c(), C.size_t(len(page)), &n)
		})
		if err != nil {
			return nil, err
		}
		keys = append(keys, page[:int(n)]...)
		if cursor == 0 {
			return keys, nil
		}
	}
}

// BlockInfo is what InspectBlock read in a block a pool wrote to a store (kvp_store_block_info,
// since 1.5): the config's fingerprint, the page's key and its parent's (the prefix chain), the
// salt, the geometry (PageBytes: of the page in one layer), and whether the checksum holds.
type BlockInfo struct {
	FormatVersion         uint32
	Fingerprint           uint64
	Key, Parent           StoreKey
	Salt                  uint64
	PageSize, NumLayers   uint32
	PageBytes, BlockBytes uint64
	ChecksumOK            bool
}

// InspectBlock calls kvp_store_block_inspect (since 1.5): the header of a block a pool wrote to a
// store and whether its checksum holds. Bytes that are not a whole block are an ErrFormat* error.
func InspectBlock(block []byte) (BlockInfo, error) {
	var info C.kvp_store_block_info
	info.struct_size = C.uint32_t(unsafe.Sizeof(info))
	var p unsafe.Pointer
	if len(block) > 0 {
		p = unsafe.Pointer(&block[0])
	}
	err := call(func() C.kvp_status { return C.kvp_store_block_inspect(p, C.size_t(len(block)), &info) })
	runtime.KeepAlive(block)
	if err != nil {
		return BlockInfo{}, err
	}
	return BlockInfo{
		FormatVersion: uint32(info.format_version), Fingerprint: uint64(info.fingerprint),
		Key: *(*StoreKey)(unsafe.Pointer(&info.key)), Parent: *(*StoreKey)(unsafe.Pointer(&info.parent)),
		Salt: uint64(info.salt), PageSize: uint32(info.page_size), NumLayers: uint32(info.num_layers),
		PageBytes: uint64(info.page_bytes), BlockBytes: uint64(info.block_bytes), ChecksumOK: info.checksum_ok != 0,
	}, nil
}

// AddStore calls kvp_pool_add_store: store becomes the pool's next storage tier (at most
// KVP_POOL_MAX_TIERS). Tier 0 receives the prefix pages the pool evicts; AddSequence restores a
// prompt's next pages from the tiers in order. The pool keeps the store reachable.
func (p *Pool) AddStore(store *Store) error {
	sh := store.ptr()
	if sh == nil {
		return newError(ErrInvalidHandle, "store is closed")
	}
	err := p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_add_store(h, sh) })
	runtime.KeepAlive(store)
	if err != nil {
		return err
	}
	p.stores = append(p.stores, store)
	return nil
}

// TierStats calls kvp_pool_get_tier_stats: the counters of tier tier (in the order the stores
// were added).
func (p *Pool) TierStats(tier uint32) (PoolTierStats, error) {
	var s C.kvp_pool_tier_stats
	s.struct_size = C.uint32_t(unsafe.Sizeof(s))
	if err := p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_get_tier_stats(h, C.uint32_t(tier), &s) }); err != nil {
		return PoolTierStats{}, err
	}
	return PoolTierStats{
		NumTiers: uint32(s.num_tiers), Lookups: int64(s.lookups), Hits: int64(s.hits), Misses: int64(s.misses),
		Rejected: int64(s.rejected), Errors: int64(s.errors), RestoredTokens: int64(s.restored_tokens),
		BytesRead: int64(s.bytes_read), BlocksWritten: int64(s.blocks_written), BytesWritten: int64(s.bytes_written),
		Dropped: int64(s.dropped),
	}, nil
}

// FlushTiers calls kvp_pool_flush_tiers: waits until every write to tier 0 queued so far has
// reached its store (or failed, counted in PoolTierStats.Errors); with cached, it first writes
// every cached prefix page tier 0 does not hold yet (to persist the prefix cache, at exit say).
func (p *Pool) FlushTiers(cached bool) error {
	var flags C.uint32_t
	if cached {
		flags = C.KVP_POOL_FLUSH_CACHED
	}
	return p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_flush_tiers(h, flags) })
}
