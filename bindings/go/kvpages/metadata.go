package kvpages

/*
#include <stdlib.h>
#include <string.h>
#include <kvpages.h>

// Builds the request array on the C side from flat Go arrays (borrowed for this call only), so
// no Go memory ever holds a pointer to Go memory.
static kvp_status kvpgo_metadata_build(const kvp_config *cfg, uint32_t n, const int64_t *computed,
                                       const int64_t *scheduled, const int32_t *ids, const int64_t *ids_start,
                                       const kvp_batch_options *opts, int32_t *order, kvp_metadata **out) {
  kvp_batch_request *reqs = n ? (kvp_batch_request *)calloc(n, sizeof *reqs) : NULL;
  if (n && !reqs) return KVP_ERR_OUT_OF_MEMORY;
  for (uint32_t i = 0; i < n; ++i) {
    reqs[i].num_computed = computed[i];
    reqs[i].num_scheduled = scheduled[i];
    reqs[i].num_pages = ids_start[i + 1] - ids_start[i];
    reqs[i].page_ids = reqs[i].num_pages ? ids + ids_start[i] : NULL;
  }
  kvp_status st = kvp_metadata_build(cfg, reqs, n, opts, order, out);
  free(reqs);
  return st;
}
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// BatchRequest is one request of a step for BuildMetadata (kvp_batch_request).
type BatchRequest struct {
	NumComputed  int64   // tokens already in the cache
	NumScheduled int64   // tokens written this step; 0 = inactive (no row)
	PageIDs      []int32 // the request's pages in logical order
}

// BatchFlags are KVP_BATCH_FLAG_* bits.
type BatchFlags uint32

// Batch flags.
const (
	// BatchSeedDistribution emits the seed's distribution [decode, decode, total].
	BatchSeedDistribution BatchFlags = C.KVP_BATCH_FLAG_SEED_DISTRIBUTION
	// BatchTightSlices sizes the v2 slice list tightly instead of to the full capacity.
	BatchTightSlices BatchFlags = C.KVP_BATCH_FLAG_TIGHT_SLICES
	// BatchKeepOrder keeps the caller's request order (decodes must then come first).
	BatchKeepOrder BatchFlags = C.KVP_BATCH_FLAG_KEEP_ORDER
	// BatchRequestOrder (since 1.2) keeps the tokens in request order in the packed tensors while
	// the rows stay decode-first (the metadata's token_starts); TokenRows and PackRequests follow it.
	BatchRequestOrder BatchFlags = C.KVP_BATCH_FLAG_REQUEST_ORDER
)

// BatchOptions are the options of BuildMetadata (kvp_batch_options); zero means default.
type BatchOptions struct {
	MaxNumReqs   int64 // page-table rows; 0 = the config's hint, else the active requests
	MaxNumTokens int64 // token bucket; 0 = the config's hint, else the scheduled tokens
	Flags        BatchFlags
}

// Metadata owns runtime metadata (kvp_metadata). Metadata from BuildMetadata also remembers
// the row order it chose, so ConcatenateRequests and PackRequests put each request's tokens in
// its rows.
type Metadata struct {
	p      *C.kvp_metadata
	arrays unsafe.Pointer // C copy of the arrays of NewMetadata (freed after the handle)
	order  []int          // row -> request index (BuildMetadata only)
	starts []int          // query_start_loc of the rows; len(order)+1
	first  []int          // row -> first token row of the packed tensors (token_starts, else starts)
	perReq []int64        // request -> scheduled tokens; nil unless built
	built  bool
}

// BuildMetadata calls kvp_metadata_build (opts nil = defaults). The builder puts decode
// requests first; the Metadata remembers that order (Order), and ConcatenateRequests /
// PackRequests use it, so per-request keys and values are never packed by hand.
func BuildMetadata(cfg *Config, reqs []BatchRequest, opts *BatchOptions) (*Metadata, error) {
	n := len(reqs)
	computed, scheduled := make([]int64, n+1), make([]int64, n+1)
	idsStart := make([]int64, n+1)
	var ids []int32
	for i, r := range reqs {
		computed[i], scheduled[i] = r.NumComputed, r.NumScheduled
		ids = append(ids, r.PageIDs...)
		idsStart[i+1] = int64(len(ids))
	}
	var co C.kvp_batch_options
	order := make([]C.int32_t, n+1)
	var out *C.kvp_metadata
	err := call(func() C.kvp_status {
		if st := C.kvp_batch_options_init(&co, C.uint32_t(unsafe.Sizeof(co))); st != C.KVP_OK {
			return st
		}
		if opts != nil {
			co.max_num_reqs, co.max_num_tokens = C.int64_t(opts.MaxNumReqs), C.int64_t(opts.MaxNumTokens)
			co.flags = C.uint32_t(opts.Flags)
		}
		return C.kvpgo_metadata_build(&cfg.raw, C.uint32_t(n), (*C.int64_t)(&computed[0]), (*C.int64_t)(&scheduled[0]),
			(*C.int32_t)(slicePtr(ids)), (*C.int64_t)(&idsStart[0]), &co, &order[0], &out)
	})
	if err != nil {
		return nil, err
	}
	m := ownMetadata(out)
	m.built, m.perReq = true, scheduled[:n]
	for _, o := range order[:n] {
		if o >= 0 {
			m.order = append(m.order, int(o))
		}
	}
	qsl, err := m.Array(MetadataQueryStartLoc)
	if err != nil {
		m.Close()
		return nil, err
	}
	ts, err := m.Array(MetadataTokenStarts)
	if err != nil {
		m.Close()
		return nil, err
	}
	for i := 0; i <= len(m.order); i++ {
		m.starts = append(m.starts, int(qsl[i]))
	}
	for i := range m.order {
		if ts != nil {
			m.first = append(m.first, int(ts[i]))
		} else {
			m.first = append(m.first, m.starts[i])
		}
	}
	return m, nil
}

func ownMetadata(p *C.kvp_metadata) *Metadata {
	m := &Metadata{p: p}
	runtime.SetFinalizer(m, (*Metadata).finalize)
	return m
}

// Order is the request index (into the requests given to BuildMetadata) of each active row:
// row i holds the tokens of request Order()[i]. nil for metadata not made by BuildMetadata.
func (m *Metadata) Order() []int { return append([]int(nil), m.order...) }

// TokenRows is where request req's tokens are in the packed tensors (row order, or request order
// with BatchRequestOrder): rows
// first … first+count-1 (count 0 for an inactive request). ok is false for metadata not made
// by BuildMetadata or a request index out of range.
func (m *Metadata) TokenRows(req int) (first, count int, ok bool) {
	if !m.built || req < 0 || req >= len(m.perReq) {
		return 0, 0, false
	}
	for row, r := range m.order {
		if r == req {
			return m.first[row], m.starts[row+1] - m.starts[row], true
		}
	}
	return 0, 0, true
}

// NumTokens is the number of token rows of the step (the T of the packed key/value tensors);
// 0 for metadata not made by BuildMetadata.
func (m *Metadata) NumTokens() int {
	if len(m.starts) == 0 {
		return 0
	}
	return m.starts[len(m.starts)-1]
}

// PackRequests packs per-request data where the metadata reads it (row order, or request order
// with BatchRequestOrder): perRequest[i] holds request
// i's NumScheduled tokens of tokenElems elements each (e.g. kv_heads*head_dim), in the order
// the requests were given to BuildMetadata; inactive requests may be nil. The result is the
// [NumTokens, tokenElems] tensor that Concatenate expects.
func PackRequests[T any](m *Metadata, perRequest [][]T, tokenElems int) ([]T, error) {
	if !m.built {
		return nil, newError(ErrInvalidArgument, "metadata not made by BuildMetadata: its row order is unknown")
	}
	if len(perRequest) != len(m.perReq) {
		return nil, newError(ErrInvalidArgument, "%d per-request slices for %d requests", len(perRequest), len(m.perReq))
	}
	if tokenElems <= 0 {
		return nil, newError(ErrInvalidArgument, "tokenElems %d must be positive", tokenElems)
	}
	for i, data := range perRequest {
		if want := int(m.perReq[i]) * tokenElems; len(data) != want {
			return nil, newError(ErrInvalidArgument, "request %d: %d elements, want %d (%d tokens × %d)",
				i, len(data), want, m.perReq[i], tokenElems)
		}
	}
	out := make([]T, m.NumTokens()*tokenElems)
	for row, req := range m.order {
		copy(out[m.first[row]*tokenElems:], perRequest[req])
	}
	return out, nil
}

func (m *Metadata) finalize() {
	// The hook runs first: once the handle is released its address may be reused at once.
	if finalizedHook != nil {
		finalizedHook(uintptr(unsafe.Pointer(m.p)))
	}
	_ = m.Close()
}

// Close releases the metadata; Close again is a no-op.
func (m *Metadata) Close() error {
	if m.p == nil {
		return nil
	}
	p := m.p
	m.p = nil
	runtime.SetFinalizer(m, nil)
	err := call(func() C.kvp_status { return C.kvp_metadata_destroy(p) })
	C.free(m.arrays)
	m.arrays = nil
	return err
}

// Handle is the kvp_metadata* for C code (nil once closed); borrowed like Cache.Handle.
func (m *Metadata) Handle() unsafe.Pointer { return unsafe.Pointer(m.p) }

// MetadataFromHandle takes ownership of a kvp_metadata* created by C code: the Metadata
// destroys it on Close or in its finalizer. A pointer that is not a live metadata handle is
// refused with ErrInvalidHandle. Its row order is unknown (use Concatenate, not
// ConcatenateRequests).
func MetadataFromHandle(handle unsafe.Pointer) (*Metadata, error) {
	p := (*C.kvp_metadata)(handle)
	if err := call(func() C.kvp_status { return C.kvp_metadata_get_array(p, 0, nil, nil) }); err != nil {
		return nil, err
	}
	return ownMetadata(p), nil
}

func (m *Metadata) handle() (*C.kvp_metadata, error) {
	p := m.ptr()
	if p == nil {
		return nil, newError(ErrInvalidHandle, "metadata is closed")
	}
	return p, nil
}

// MetadataField selects one array of a metadata handle (KVP_METADATA_*).
type MetadataField uint32

// Metadata arrays.
const (
	MetadataPagesTables         MetadataField = C.KVP_METADATA_PAGES_TABLES
	MetadataContextLens         MetadataField = C.KVP_METADATA_CONTEXT_LENS
	MetadataQueryStartLoc       MetadataField = C.KVP_METADATA_QUERY_START_LOC
	MetadataNumSeqs             MetadataField = C.KVP_METADATA_NUM_SEQS
	MetadataSlotMapping         MetadataField = C.KVP_METADATA_SLOT_MAPPING
	MetadataNumKVUpdateSlices   MetadataField = C.KVP_METADATA_NUM_KV_UPDATE_SLICES
	MetadataRequestDistribution MetadataField = C.KVP_METADATA_REQUEST_DISTRIBUTION
	MetadataPositionIDs         MetadataField = C.KVP_METADATA_POSITION_IDS
	MetadataTokenStarts         MetadataField = C.KVP_METADATA_TOKEN_STARTS // since 1.2
)

// Array is a copy of one array of host metadata (kvp_metadata_get_array); nil when absent.
func (m *Metadata) Array(field MetadataField) ([]int32, error) {
	p, err := m.handle()
	if err != nil {
		return nil, err
	}
	var data *C.int32_t
	var n C.int64_t
	var out []int32
	err = call(func() C.kvp_status {
		var t C.kvp_metadata_desc
		t.struct_size = C.uint32_t(unsafe.Sizeof(t))
		if st := C.kvp_metadata_get_desc(p, &t); st != C.KVP_OK {
			return st
		}
		if t.device_type == C.KVP_DEVICE_CUDA {
			return C.KVP_ERR_UNSUPPORTED
		}
		st := C.kvp_metadata_get_array(p, C.kvp_metadata_field(field), &data, &n)
		if st == C.KVP_OK && n > 0 {
			out = append(out, unsafe.Slice((*int32)(unsafe.Pointer(data)), int(n))...)
		}
		return st
	})
	runtime.KeepAlive(m)
	return out, err
}

// MetadataArrays describe runtime metadata (kvp_metadata_desc) with Go arrays.
type MetadataArrays struct {
	Layout                        Layout  // 0 = v3
	PageSize                      int64   // 0 = the cache's
	NumSlicesPerKVCacheUpdatePage int64   // informational; ≤ 0 = unset
	PagesTables                   []int32 // [NumReqs, PagesPerReq] row-major
	NumReqs, PagesPerReq          int64
	ContextLens, QueryStartLoc    []int32
	NumSeqs                       []int32
	SlotMapping                   []int32 // v2: [3, NumSlices] row-major
	NumSlices                     int64
	NumKVUpdateSlices             []int32
	RequestDistribution           []int32 // v3: [decode end, prefill end, sequences]
	PositionIDs                   []int32
}

// Arrays is a copy of every array of host metadata (kvp_metadata_get_desc).
func (m *Metadata) Arrays() (MetadataArrays, error) {
	p, err := m.handle()
	if err != nil {
		return MetadataArrays{}, err
	}
	var a MetadataArrays
	err = call(func() C.kvp_status {
		var d C.kvp_metadata_desc
		d.struct_size = C.uint32_t(unsafe.Sizeof(d))
		if st := C.kvp_metadata_get_desc(p, &d); st != C.KVP_OK {
			return st
		}
		if d.device_type == C.KVP_DEVICE_CUDA {
			return C.KVP_ERR_UNSUPPORTED
		}
		a = arraysOf(&d)
		return C.KVP_OK
	})
	runtime.KeepAlive(m)
	return a, err
}

func ints(p *C.int32_t, n C.int64_t) []int32 {
	if p == nil || n <= 0 {
		return nil
	}
	return append([]int32(nil), unsafe.Slice((*int32)(unsafe.Pointer(p)), int(n))...)
}

func arraysOf(d *C.kvp_metadata_desc) MetadataArrays {
	return MetadataArrays{Layout: Layout(d.version), PageSize: int64(d.page_size),
		NumSlicesPerKVCacheUpdatePage: int64(d.num_slices_per_kv_cache_update_page),
		PagesTables:                   ints(d.pages_tables, d.num_reqs*d.pages_per_req),
		NumReqs:                       int64(d.num_reqs), PagesPerReq: int64(d.pages_per_req),
		ContextLens: ints(d.context_lens, d.context_lens_len), QueryStartLoc: ints(d.query_start_loc, d.query_start_loc_len),
		NumSeqs: ints(d.num_seqs, d.num_seqs_len), SlotMapping: ints(d.slot_mapping, 3*d.num_slices),
		NumSlices: int64(d.num_slices), NumKVUpdateSlices: ints(d.num_kv_update_slices, d.num_kv_update_slices_len),
		RequestDistribution: ints(d.request_distribution, d.request_distribution_len),
		PositionIDs:         ints(d.position_ids, d.position_ids_len)}
}

// NewMetadata wraps arrays in a metadata handle (kvp_metadata_create). The C handle borrows
// its arrays for its whole life, which cgo does not allow for Go memory, so the arrays are
// copied once into C memory that the Metadata owns and frees on Close.
func NewMetadata(a MetadataArrays) (*Metadata, error) {
	fields := [][]int32{a.PagesTables, a.ContextLens, a.QueryStartLoc, a.NumSeqs, a.SlotMapping,
		a.NumKVUpdateSlices, a.RequestDistribution, a.PositionIDs}
	total := 1
	for _, f := range fields {
		total += len(f)
	}
	mem := C.calloc(C.size_t(total), 4)
	if mem == nil {
		return nil, newError(ErrOutOfMemory, "%d metadata elements", total)
	}
	all := unsafe.Slice((*int32)(mem), total)
	ptrs := make([]*C.int32_t, len(fields))
	at := 0
	for i, f := range fields {
		if f != nil {
			ptrs[i] = (*C.int32_t)(unsafe.Pointer(&all[at]))
			at += copy(all[at:], f)
		}
	}
	var out *C.kvp_metadata
	err := call(func() C.kvp_status {
		d := (*C.kvp_metadata_desc)(C.calloc(1, C.size_t(unsafe.Sizeof(C.kvp_metadata_desc{}))))
		defer C.free(unsafe.Pointer(d))
		if st := C.kvp_metadata_desc_init(d, C.uint32_t(unsafe.Sizeof(*d))); st != C.KVP_OK {
			return st
		}
		d.version, d.page_size = C.kvp_layout(a.Layout), C.int64_t(a.PageSize)
		d.num_slices_per_kv_cache_update_page = C.int64_t(a.NumSlicesPerKVCacheUpdatePage)
		d.pages_tables, d.num_reqs, d.pages_per_req = ptrs[0], C.int64_t(a.NumReqs), C.int64_t(a.PagesPerReq)
		d.context_lens, d.context_lens_len = ptrs[1], C.int64_t(len(a.ContextLens))
		d.query_start_loc, d.query_start_loc_len = ptrs[2], C.int64_t(len(a.QueryStartLoc))
		d.num_seqs, d.num_seqs_len = ptrs[3], C.int64_t(len(a.NumSeqs))
		d.slot_mapping, d.num_slices = ptrs[4], C.int64_t(a.NumSlices)
		d.num_kv_update_slices, d.num_kv_update_slices_len = ptrs[5], C.int64_t(len(a.NumKVUpdateSlices))
		d.request_distribution, d.request_distribution_len = ptrs[6], C.int64_t(len(a.RequestDistribution))
		d.position_ids, d.position_ids_len = ptrs[7], C.int64_t(len(a.PositionIDs))
		return C.kvp_metadata_create(d, &out)
	})
	if err != nil {
		C.free(mem)
		return nil, err
	}
	m := ownMetadata(out)
	m.arrays = mem
	return m, nil
}

// NewEmptyMetadata creates owning metadata for an empty batch (kvp_metadata_create_empty):
// every array zero, consistent shapes; writing with it changes nothing.
func NewEmptyMetadata(layout Layout, numTokens, maxNumReqs, maxPages, pageSize int64) (*Metadata, error) {
	var out *C.kvp_metadata
	err := call(func() C.kvp_status {
		return C.kvp_metadata_create_empty(C.kvp_layout(layout), C.int64_t(numTokens), C.int64_t(maxNumReqs),
			C.int64_t(maxPages), C.int64_t(pageSize), &out)
	})
	if err != nil {
		return nil, err
	}
	return ownMetadata(out), nil
}

// MarshalJSON writes host metadata as JSON with integer arrays (kvp_metadata_to_json).
func (m *Metadata) MarshalJSON() ([]byte, error) {
	p, err := m.handle()
	if err != nil {
		return nil, err
	}
	var need C.size_t
	err = call(func() C.kvp_status { return C.kvp_metadata_to_json(p, nil, 0, &need) })
	if err != nil && !isStatus(err, ErrBufferTooSmall) {
		return nil, err
	}
	buf := make([]byte, int(need))
	var n C.size_t
	err = call(func() C.kvp_status {
		return C.kvp_metadata_to_json(p, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &n)
	})
	runtime.KeepAlive(m)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// MetadataFromJSON creates owning host metadata from text of MarshalJSON
// (kvp_metadata_from_json). Its row order is unknown (use Concatenate).
func MetadataFromJSON(text []byte) (*Metadata, error) {
	var out *C.kvp_metadata
	err := call(func() C.kvp_status {
		return C.kvp_metadata_from_json((*C.char)(slicePtr(text)), C.size_t(len(text)), &out)
	})
	if err != nil {
		return nil, err
	}
	return ownMetadata(out), nil
}
