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

// Page state flags reported by Pool.PageState (KVP_PAGE_FLAG_*).
const (
	PageFlagNull    = uint32(C.KVP_PAGE_FLAG_NULL)    // the null page 0, never handed out
	PageFlagFree    = uint32(C.KVP_PAGE_FLAG_FREE)    // on the free list
	PageFlagIndexed = uint32(C.KVP_PAGE_FLAG_INDEXED) // in the prefix index (evictable when unheld)
)

// SeqID identifies a sequence of a Pool (kvp_seq_id). It is opaque: compare it, copy it and
// pass it back to the pool that returned it. A freed id is rejected with ErrNotFound.
type SeqID struct{ id uint32 }

// Raw is the 32-bit value of the id (never 0 for an id a pool returned).
func (s SeqID) Raw() uint32 { return s.id }

func (s SeqID) c() C.kvp_seq_id { return C.kvp_seq_id{id: C.uint32_t(s.id)} }

// PoolOptions are the inputs of NewPool (kvp_pool_options); zero means default.
type PoolOptions struct {
	MaxSequences  uint32 // live sequences at most; 0 = the config's MaxNumReqs if set, else its default
	NoPrefixCache bool   // never index pages: no prefix reuse, released pages are freed at once
	// WriteQueueBytes (since 1.5): bytes of staging blocks queued for a tier 0 written
	// asynchronously; at least one block; 0 = 64 MiB.
	WriteQueueBytes uint64
}

// PoolStats are the counters of a pool (kvp_pool_stats).
// FreePages + EvictablePages + UsedPages == TotalPages always holds.
type PoolStats struct {
	MaxSequences                                       uint32
	PageSize, MaxPagesPerSequence, TotalPages          int64
	FreePages, EvictablePages, UsedPages, IndexedPages int64
	NumSequences, PromptTokens, ReusedTokens           int64
	Evictions, CowCopies                               int64
}

// PoolShardStats are the counters of one data-parallel shard of a pool (kvp_pool_shard_stats,
// since 1.4): the shard hands out pages [FirstPage, EndPage), and
// FreePages + EvictablePages + UsedPages == TotalPages.
type PoolShardStats struct {
	NumShards                                        uint32
	FirstPage, EndPage                               int32
	TotalPages, FreePages, EvictablePages, UsedPages int64
	NumSequences                                     int64
}

// Pool owns a kvp_pool: it hands the pages of a Cache to sequences, shares them by reference
// count (fork, copy-on-write) and reuses computed pages by prefix hash. It keeps its Cache
// reachable, so the cache is never finalized before the pool. Close the pool before the cache:
// once the cache is closed, pool calls that need it return ErrInvalidHandle.
// A pool is not synchronised: calls that modify it must not run concurrently.
type Pool struct {
	p      *C.kvp_pool
	cache  *Cache
	stores []*Store // its storage tiers (AddStore), kept reachable as long as the pool
}

// NewPool calls kvp_pool_create over the pages of cache.
func NewPool(cache *Cache, o PoolOptions) (*Pool, error) {
	cp, err := cache.handle()
	if err != nil {
		return nil, err
	}
	var opts C.kvp_pool_options
	var out *C.kvp_pool
	err = call(func() C.kvp_status {
		if st := C.kvp_pool_options_init(&opts, C.uint32_t(unsafe.Sizeof(opts))); st != C.KVP_OK {
			return st
		}
		opts.max_sequences = C.uint32_t(o.MaxSequences)
		opts.write_queue_bytes = C.uint64_t(o.WriteQueueBytes)
		if o.NoPrefixCache {
			opts.flags |= C.KVP_POOL_FLAG_NO_PREFIX_CACHE
		}
		return C.kvp_pool_create(cp, &opts, &out)
	})
	runtime.KeepAlive(cache)
	if err != nil {
		return nil, err
	}
	p := &Pool{p: out, cache: cache}
	runtime.SetFinalizer(p, (*Pool).finalize)
	return p, nil
}

func (p *Pool) finalize() {
	// The hook runs first: once the handle is released its address may be reused at once.
	if finalizedHook != nil {
		finalizedHook(uintptr(unsafe.Pointer(p.p)))
	}
	_ = p.Close()
}

// Close destroys the pool (never touching the cache). Later calls on it return
// ErrInvalidHandle; Close again is a no-op.
func (p *Pool) Close() error {
	if p.p == nil {
		return nil
	}
	h := p.p
	p.p = nil
	runtime.SetFinalizer(p, nil)
	return call(func() C.kvp_status { return C.kvp_pool_destroy(h) })
}

// Cache is the cache whose pages the pool hands out.
func (p *Pool) Cache() *Cache { return p.cache }

func (p *Pool) handle() (*C.kvp_pool, error) {
	h := p.ptr()
	if h == nil {
		return nil, newError(ErrInvalidHandle, "pool is closed")
	}
	return h, nil
}

// do runs one C call on the pool's handle and keeps the pool reachable until it returns.
func (p *Pool) do(f func(h *C.kvp_pool) C.kvp_status) error {
	h, err := p.handle()
	if err != nil {
		return err
	}
	err = call(func() C.kvp_status { return f(h) })
	runtime.KeepAlive(p)
	return err
}

func int32Ptr(tokens []int32) *C.int32_t {
	if len(tokens) == 0 {
		return nil
	}
	return (*C.int32_t)(unsafe.Pointer(&tokens[0]))
}

// AddSequence calls kvp_pool_add_sequence: it adds a sequence with a prompt and returns its id
// and the number of prompt tokens reused from the prefix cache (already computed: write the
// K/V of the others). salt namespaces the prefix cache; reuseAll lets a full prompt hit reuse
// every page.
func (p *Pool) AddSequence(tokens []int32, salt uint64, reuseAll bool) (SeqID, int, error) {
	return p.add(tokens, salt, reuseFlag(reuseAll))
}

// AddSequenceInShard is AddSequence into data-parallel shard shard (KVP_POOL_ADD_IN_SHARD)
// instead of the one the pool would choose (the longest cached prefix that can hold the rest,
// else the most free pages). Prefix matching stays within the shard; a shard at or past the
// config's DataParallelSize is ErrInvalidArgument.
func (p *Pool) AddSequenceInShard(tokens []int32, salt uint64, reuseAll bool, shard uint16) (SeqID, int, error) {
	return p.add(tokens, salt, reuseFlag(reuseAll)|C.KVP_POOL_ADD_FLAG_SHARD|C.uint32_t(shard)<<16)
}

func reuseFlag(reuseAll bool) C.uint32_t {
	if reuseAll {
		return C.KVP_POOL_ADD_FLAG_REUSE_ALL
	}
	return 0
}

func (p *Pool) add(tokens []int32, salt uint64, flags C.uint32_t) (SeqID, int, error) {
	var seq C.kvp_seq_id
	var reused C.size_t
	err := p.do(func(h *C.kvp_pool) C.kvp_status {
		return C.kvp_pool_add_sequence(h, int32Ptr(tokens), C.size_t(len(tokens)), C.uint64_t(salt), flags, &seq, &reused)
	})
	runtime.KeepAlive(tokens)
	if err != nil {
		return SeqID{}, 0, err
	}
	return SeqID{uint32(seq.id)}, int(reused), nil
}

// Append calls kvp_pool_append: it declares the sequence's tokens so far computed, then
// appends tokens (copy-on-write of a shared tail page, allocating pages as needed).
func (p *Pool) Append(seq SeqID, tokens []int32) error {
	err := p.do(func(h *C.kvp_pool) C.kvp_status {
		return C.kvp_pool_append(h, seq.c(), int32Ptr(tokens), C.size_t(len(tokens)), nil)
	})
	runtime.KeepAlive(tokens)
	return err
}

func size(n int, what string) (C.size_t, error) {
	if n < 0 {
		return 0, newError(ErrInvalidArgument, "%s %d is negative", what, n)
	}
	return C.size_t(n), nil
}

// SetComputed calls kvp_pool_set_computed: the K/V of the first numTokens tokens is written.
func (p *Pool) SetComputed(seq SeqID, numTokens int) error {
	n, err := size(numTokens, "numTokens")
	if err != nil {
		return err
	}
	return p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_set_computed(h, seq.c(), n) })
}

// Truncate calls kvp_pool_truncate: it shortens the sequence to newLength tokens.
func (p *Pool) Truncate(seq SeqID, newLength int) error {
	n, err := size(newLength, "newLength")
	if err != nil {
		return err
	}
	return p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_truncate(h, seq.c(), n) })
}

// Fork calls kvp_pool_fork: numChildren new sequences that share all of seq's pages.
func (p *Pool) Fork(seq SeqID, numChildren int) ([]SeqID, error) {
	if numChildren < 0 || numChildren > 1<<20 {
		return nil, newError(ErrInvalidArgument, "numChildren %d out of range", numChildren)
	}
	out := make([]C.kvp_seq_id, numChildren+1) // +1: never a zero-length slice to index
	err := p.do(func(h *C.kvp_pool) C.kvp_status {
		return C.kvp_pool_fork(h, seq.c(), C.uint32_t(numChildren), &out[0])
	})
	if err != nil {
		return nil, err
	}
	children := make([]SeqID, numChildren)
	for i := range children {
		children[i] = SeqID{uint32(out[i].id)}
	}
	return children, nil
}

// FreeSequence calls kvp_pool_free_sequence: it releases seq's pages and invalidates the id.
func (p *Pool) FreeSequence(seq SeqID) error {
	return p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_free_sequence(h, seq.c()) })
}

// Length calls kvp_pool_get_sequence_length: the tokens in seq and its computed watermark.
func (p *Pool) Length(seq SeqID) (length, computed int, err error) {
	var l, c C.size_t
	err = p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_get_sequence_length(h, seq.c(), &l, &c) })
	return int(l), int(c), err
}

// PageTable calls kvp_pool_get_page_table: seq's page ids in logical order (no padding).
func (p *Pool) PageTable(seq SeqID) ([]int32, error) {
	st, err := p.Stats()
	if err != nil {
		return nil, err
	}
	buf := make([]int32, st.MaxPagesPerSequence+1)
	var count C.size_t
	err = p.do(func(h *C.kvp_pool) C.kvp_status {
		return C.kvp_pool_get_page_table(h, seq.c(), (*C.int32_t)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &count)
	})
	if err != nil {
		return nil, err
	}
	return buf[:count:count], nil
}

// Slots calls kvp_pool_get_slots: the cache slots (page*page_size + row) of positions
// start .. start+count-1 of seq.
func (p *Pool) Slots(seq SeqID, start, count int) ([]int32, error) {
	s, err := size(start, "start")
	if err != nil {
		return nil, err
	}
	n, err := size(count, "count")
	if err != nil {
		return nil, err
	}
	buf := make([]int32, count+1)
	err = p.do(func(h *C.kvp_pool) C.kvp_status {
		return C.kvp_pool_get_slots(h, seq.c(), s, n, (*C.int32_t)(unsafe.Pointer(&buf[0])))
	})
	if err != nil {
		return nil, err
	}
	return buf[:count:count], nil
}

// BatchRequest calls kvp_pool_get_batch_request: seq as a request for BuildMetadata (computed
// watermark, pending tokens, and its page ids copied out of the pool).
func (p *Pool) BatchRequest(seq SeqID) (BatchRequest, error) {
	var r C.kvp_batch_request
	var ids []int32
	err := p.do(func(h *C.kvp_pool) C.kvp_status {
		st := C.kvp_pool_get_batch_request(h, seq.c(), &r)
		if st == C.KVP_OK && r.num_pages > 0 {
			// Copied before the pool can change (the row is borrowed from it).
			ids = make([]int32, int(r.num_pages))
			copy(ids, unsafe.Slice((*int32)(unsafe.Pointer(r.page_ids)), int(r.num_pages)))
		}
		return st
	})
	if err != nil {
		return BatchRequest{}, err
	}
	return BatchRequest{NumComputed: int64(r.num_computed), NumScheduled: int64(r.num_scheduled), PageIDs: ids}, nil
}

// PageState calls kvp_pool_get_page_state: the reference count and PageFlag* bits of a page.
func (p *Pool) PageState(page int32) (refcount, flags uint32, err error) {
	var rc, fl C.uint32_t
	err = p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_get_page_state(h, C.int32_t(page), &rc, &fl) })
	return uint32(rc), uint32(fl), err
}

// Stats calls kvp_pool_get_stats.
func (p *Pool) Stats() (PoolStats, error) {
	var s C.kvp_pool_stats
	s.struct_size = C.uint32_t(unsafe.Sizeof(s))
	if err := p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_get_stats(h, &s) }); err != nil {
		return PoolStats{}, err
	}
	return PoolStats{
		MaxSequences: uint32(s.max_sequences), PageSize: int64(s.page_size),
		MaxPagesPerSequence: int64(s.max_pages_per_sequence), TotalPages: int64(s.total_pages),
		FreePages: int64(s.free_pages), EvictablePages: int64(s.evictable_pages), UsedPages: int64(s.used_pages),
		IndexedPages: int64(s.indexed_pages), NumSequences: int64(s.num_sequences),
		PromptTokens: int64(s.prompt_tokens), ReusedTokens: int64(s.reused_tokens),
		Evictions: int64(s.evictions), CowCopies: int64(s.cow_copies),
	}, nil
}

// SequenceShard calls kvp_pool_get_sequence_shard: the data-parallel shard seq lives in (0
// without shards).
func (p *Pool) SequenceShard(seq SeqID) (uint32, error) {
	var shard C.uint32_t
	err := p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_get_sequence_shard(h, seq.c(), &shard) })
	return uint32(shard), err
}

// ShardStats calls kvp_pool_get_shard_stats: the counters of one data-parallel shard (a pool
// without shards has one, shard 0).
func (p *Pool) ShardStats(shard uint32) (PoolShardStats, error) {
	var s C.kvp_pool_shard_stats
	s.struct_size = C.uint32_t(unsafe.Sizeof(s))
	if err := p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_get_shard_stats(h, C.uint32_t(shard), &s) }); err != nil {
		return PoolShardStats{}, err
	}
	return PoolShardStats{
		NumShards: uint32(s.num_shards), FirstPage: int32(s.first_page), EndPage: int32(s.end_page),
		TotalPages: int64(s.total_pages), FreePages: int64(s.free_pages), EvictablePages: int64(s.evictable_pages),
		UsedPages: int64(s.used_pages), NumSequences: int64(s.num_sequences),
	}, nil
}

// CheckInvariants calls kvp_pool_check_invariants: ErrInternal, with a message saying which,
// if an invariant of the pool's bookkeeping is violated.
func (p *Pool) CheckInvariants() error {
	return p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_check_invariants(h) })
}

// ClearPrefixCache calls kvp_pool_clear_prefix_cache: the prefix index is emptied and its
// evictable pages become free.
func (p *Pool) ClearPrefixCache() error {
	return p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_clear_prefix_cache(h) })
}

// CopyPages calls kvp_cache_copy_pages: page dst[i] receives the contents of page src[i], in
// every layer. Destinations must be distinct and none of them a source.
func (c *Cache) CopyPages(src, dst []int32) error {
	if len(src) != len(dst) {
		return newError(ErrInvalidArgument, "%d source pages but %d destination pages", len(src), len(dst))
	}
	h, err := c.handle()
	if err != nil {
		return err
	}
	err = call(func() C.kvp_status {
		return C.kvp_cache_copy_pages(h, int32Ptr(src), int32Ptr(dst), C.size_t(len(src)), nil)
	})
	runtime.KeepAlive(c)
	runtime.KeepAlive(src)
	runtime.KeepAlive(dst)
	return err
}

// SaveSequence calls kvp_pool_save_sequence: the blob of sequence seq (its token ids and its
// pages' bytes in every layer), which RestoreSequence turns into a new sequence of any pool of a
// compatible cache. Every token must be computed (SetComputed).
func (p *Pool) SaveSequence(seq SeqID) ([]byte, error) {
	var size C.size_t
	err := p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_save_sequence(h, seq.c(), nil, 0, &size) })
	if e, ok := err.(*Error); !ok || e.Status != ErrBufferTooSmall {
		return nil, err // a blob has at least a header: size 0 never fits
	}
	blob := make([]byte, int(size))
	err = p.do(func(h *C.kvp_pool) C.kvp_status {
		return C.kvp_pool_save_sequence(h, seq.c(), unsafe.Pointer(&blob[0]), C.size_t(len(blob)), &size)
	})
	if err != nil {
		return nil, err
	}
	return blob[:int(size)], nil
}

// SaveSequenceFile calls kvp_pool_save_sequence_to_file: SaveSequence into a file replaced
// atomically; sync false skips the two fsyncs (KVP_POOL_SAVE_FLAG_NO_SYNC).
func (p *Pool) SaveSequenceFile(seq SeqID, path string, sync bool) error {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var flags C.uint32_t
	if !sync {
		flags = C.KVP_POOL_SAVE_FLAG_NO_SYNC
	}
	return p.do(func(h *C.kvp_pool) C.kvp_status { return C.kvp_pool_save_sequence_to_file(h, seq.c(), cpath, flags) })
}

// RestoreSequence calls kvp_pool_restore_sequence: a new sequence from a saved blob, checked
// whole before the pool changes; its full pages that the prefix index holds are shared, and every
// token counts as computed. shard >= 0 forces that data-parallel shard (KVP_POOL_ADD_IN_SHARD);
// shard < 0 places it as AddSequence does.
func (p *Pool) RestoreSequence(blob []byte, shard int) (SeqID, error) {
	var src unsafe.Pointer
	if len(blob) > 0 {
		src = unsafe.Pointer(&blob[0])
	}
	var seq C.kvp_seq_id
	err := p.do(func(h *C.kvp_pool) C.kvp_status {
		return C.kvp_pool_restore_sequence(h, src, C.size_t(len(blob)), shardFlags(shard), &seq)
	})
	runtime.KeepAlive(blob)
	if err != nil {
		return SeqID{}, err
	}
	return SeqID{uint32(seq.id)}, nil
}

// RestoreSequenceFile calls kvp_pool_restore_sequence_from_file: RestoreSequence from a file
// written by SaveSequenceFile.
func (p *Pool) RestoreSequenceFile(path string, shard int) (SeqID, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var seq C.kvp_seq_id
	err := p.do(func(h *C.kvp_pool) C.kvp_status {
		return C.kvp_pool_restore_sequence_from_file(h, cpath, shardFlags(shard), &seq)
	})
	if err != nil {
		return SeqID{}, err
	}
	return SeqID{uint32(seq.id)}, nil
}

// shardFlags are the flags of a restore into shard (KVP_POOL_ADD_IN_SHARD), or 0 when shard < 0.
func shardFlags(shard int) C.uint32_t {
	if shard < 0 {
		return 0
	}
	return C.KVP_POOL_ADD_FLAG_SHARD | C.uint32_t(shard)<<16
}
