// Package kvpages is the Go binding of kvpages, a paged KV cache for LLM inference (cgo).
//
// It links the C library through pkg-config (PKG_CONFIG_PATH for a non-system prefix).
// Handles are released exactly once: by Close (explicit, preferred) or by a finalizer when a
// handle becomes unreachable. Every call that can fail runs with its goroutine locked to the OS
// thread, so the library's thread-local error message is read on the thread that failed; errors
// are *Error values carrying the code, its name and that message (errors.Is works with the Err*
// sentinels).
package kvpages

/*
#cgo pkg-config: kvpages
#include <stdlib.h>
#include <string.h>
#include <kvpages.h>
#if KVP_VERSION_MAJOR != 1
#error "these bindings need kvpages 1.x headers"
#endif
#if KVP_VERSION_NUMBER < 10100
#error "these bindings need kvpages 1.1 or newer 1.x headers (kvp_attention)"
#endif
*/
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"unsafe"
)

// Element types, layouts and view kinds (KVP_DTYPE_*, KVP_LAYOUT_*, KVP_VIEW_*).
const (
	DtypeF32      = uint32(C.KVP_DTYPE_F32)
	DtypeF16      = uint32(C.KVP_DTYPE_F16)
	DtypeBF16     = uint32(C.KVP_DTYPE_BF16)
	DtypeF8E4M3FN = uint32(C.KVP_DTYPE_F8_E4M3FN)
	DtypeF8E5M2   = uint32(C.KVP_DTYPE_F8_E5M2)
	LayoutV2      = uint32(C.KVP_LAYOUT_V2)
	LayoutV3      = uint32(C.KVP_LAYOUT_V3)
	ViewPages     = uint32(C.KVP_VIEW_PAGES)
	ViewFlat      = uint32(C.KVP_VIEW_FLAT)
	ViewKeys      = uint32(C.KVP_VIEW_KEYS)
	ViewValues    = uint32(C.KVP_VIEW_VALUES)
	HeaderVersion = uint32(C.KVP_VERSION_NUMBER)
)

// Error is a failed kvpages call.
type Error struct {
	Code    int32  // the kvp_status code
	Name    string // e.g. "KVP_ERR_INVALID_ARGUMENT"
	Message string // the library's detail message
}

func (e *Error) Error() string { return e.Name + ": " + e.Message }

// Is makes errors.Is(err, ErrInvalidArgument) compare codes.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && t.Message == ""
}

func sentinel(code C.kvp_status) *Error {
	return &Error{Code: int32(code), Name: C.GoString(C.kvp_status_name(code))}
}

// Sentinels for errors.Is. Codes without a sentinel still produce an *Error with their code.
var (
	ErrInvalidArgument = sentinel(C.KVP_ERR_INVALID_ARGUMENT)
	ErrInvalidHandle   = sentinel(C.KVP_ERR_INVALID_HANDLE)
	ErrNotFound        = sentinel(C.KVP_ERR_NOT_FOUND)
	ErrVersionMismatch = sentinel(C.KVP_ERR_VERSION_MISMATCH)
	ErrUnsupported     = sentinel(C.KVP_ERR_UNSUPPORTED)
	ErrBufferTooSmall  = sentinel(C.KVP_ERR_BUFFER_TOO_SMALL)
	ErrOutOfMemory     = sentinel(C.KVP_ERR_OUT_OF_MEMORY)
	ErrOutOfPages      = sentinel(C.KVP_ERR_OUT_OF_PAGES)
	ErrDeviceLost      = sentinel(C.KVP_ERR_DEVICE_LOST)
	ErrDevice          = sentinel(C.KVP_ERR_DEVICE)
	ErrNoDevice        = sentinel(C.KVP_ERR_NO_DEVICE)
	ErrInternal        = sentinel(C.KVP_ERR_INTERNAL)
)

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
	e := sentinel(st)
	e.Message = string(buf[:n])
	return e
}

// Version is the loaded library's version string.
func Version() string { return C.GoString(C.kvp_version_string()) }

// CheckABI fails unless the loaded library is compatible with the headers this package was
// compiled with.
func CheckABI() error {
	return call(func() C.kvp_status { return C.kvp_check_abi(C.uint32_t(HeaderVersion)) })
}

// ConfigOptions are the inputs of NewConfig (kvp_config_options); zero means default.
type ConfigOptions struct {
	NumHiddenLayers, NumKVHeads, MaxModelLength, HeadDim, PageSize int64
	Dtype, Layout, Flags                                           uint32
	BudgetBytes                                                    int64
	HBMUtilization                                                 float64
	MaxNumReqs, MaxNumTokens                                       int64
}

// Config is a validated cache configuration (a copy of kvp_config).
type Config struct{ raw C.kvp_config }

// NewConfig calls kvp_config_create: it derives the number of pages from the budget.
func NewConfig(o ConfigOptions) (*Config, error) {
	var opts C.kvp_config_options
	cfg := &Config{}
	err := call(func() C.kvp_status {
		if st := C.kvp_config_options_init(&opts, C.uint32_t(unsafe.Sizeof(opts))); st != C.KVP_OK {
			return st
		}
		opts.num_hidden_layers = C.int64_t(o.NumHiddenLayers)
		opts.num_kv_heads = C.int64_t(o.NumKVHeads)
		opts.max_model_length = C.int64_t(o.MaxModelLength)
		opts.kv_head_dim_size = C.int64_t(o.HeadDim)
		opts.page_size = C.int64_t(o.PageSize)
		opts.kvdtype = C.kvp_dtype(o.Dtype)
		opts.version = C.kvp_layout(o.Layout)
		opts.flags = C.uint32_t(o.Flags)
		opts.budget_bytes = C.int64_t(o.BudgetBytes)
		opts.hbm_utilization = C.double(o.HBMUtilization)
		opts.max_num_reqs = C.int64_t(o.MaxNumReqs)
		opts.max_num_tokens = C.int64_t(o.MaxNumTokens)
		return C.kvp_config_create(&opts, &cfg.raw)
	})
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// NumPages is the number of pages per layer (including the null page 0).
func (c *Config) NumPages() int64 { return int64(c.raw.num_pages) }

// PageSize is the number of tokens per page.
func (c *Config) PageSize() int64 { return int64(c.raw.page_size) }

// Cache owns a kvp_cache handle.
type Cache struct{ p *C.kvp_cache }

// NewCache calls kvp_cache_create (CPU).
func NewCache(cfg *Config) (*Cache, error) {
	return newCache(cfg, nil)
}

// NewCacheOnDevice calls kvp_cache_create on CUDA device `device`; without it the error is
// ErrNoDevice. Write such a cache from device memory through the C API (kvp_concatenate with a
// stream); ReadLayer and WriteLayer work for it as for a CPU cache.
func NewCacheOnDevice(cfg *Config, device int) (*Cache, error) {
	o := (*C.kvp_cache_options)(C.calloc(1, C.size_t(unsafe.Sizeof(C.kvp_cache_options{}))))
	defer C.free(unsafe.Pointer(o))
	if err := call(func() C.kvp_status {
		return C.kvp_cache_options_init(o, C.uint32_t(unsafe.Sizeof(C.kvp_cache_options{})))
	}); err != nil {
		return nil, err
	}
	o.device_type = C.KVP_DEVICE_CUDA
	o.device_id = C.int32_t(device)
	return newCache(cfg, o)
}

func newCache(cfg *Config, o *C.kvp_cache_options) (*Cache, error) {
	var out *C.kvp_cache
	if err := call(func() C.kvp_status { return C.kvp_cache_create(&cfg.raw, o, &out) }); err != nil {
		return nil, err
	}
	c := &Cache{p: out}
	runtime.SetFinalizer(c, (*Cache).finalize)
	return c, nil
}

// DeviceCount calls kvp_device_count: usable CUDA devices (0 without CUDA, a driver or a GPU).
func DeviceCount() (int, error) {
	var n C.int32_t
	err := call(func() C.kvp_status { return C.kvp_device_count(&n) })
	return int(n), err
}

// LayerBytes is the size of one layer in bytes.
func (c *Cache) LayerBytes() (int, error) {
	p, err := c.handle()
	if err != nil {
		return 0, err
	}
	var li C.kvp_layout_info
	li.struct_size = C.uint32_t(unsafe.Sizeof(li))
	err = call(func() C.kvp_status { return C.kvp_cache_get_layout(p, &li) })
	runtime.KeepAlive(c)
	return int(li.layer_bytes), err
}

// ReadLayer calls kvp_cache_read_layer: a copy of one layer's bytes (CPU or CUDA cache).
func (c *Cache) ReadLayer(layer uint32) ([]byte, error) {
	n, err := c.LayerBytes()
	if err != nil {
		return nil, err
	}
	out := make([]byte, n)
	p, _ := c.handle()
	err = call(func() C.kvp_status {
		return C.kvp_cache_read_layer(p, C.uint32_t(layer), unsafe.Pointer(&out[0]), C.size_t(n), nil)
	})
	runtime.KeepAlive(c)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// WriteLayer calls kvp_cache_write_layer: data must hold exactly LayerBytes bytes.
func (c *Cache) WriteLayer(layer uint32, data []byte) error {
	p, err := c.handle()
	if err != nil {
		return err
	}
	var src unsafe.Pointer
	if len(data) > 0 {
		src = unsafe.Pointer(&data[0])
	}
	err = call(func() C.kvp_status {
		return C.kvp_cache_write_layer(p, C.uint32_t(layer), src, C.size_t(len(data)), nil)
	})
	runtime.KeepAlive(c)
	return err
}

// finalizedHook, when set (by tests), is called with the C pointer of each handle a finalizer
// is about to release.
var finalizedHook func(raw uintptr)

func (c *Cache) finalize() {
	// The hook runs first: once the handle is released its address may be reused at once.
	if finalizedHook != nil {
		finalizedHook(uintptr(unsafe.Pointer(c.p)))
	}
	_ = c.Close()
}

// Close destroys the cache. Later calls on it return ErrInvalidHandle; Close again is a no-op.
func (c *Cache) Close() error {
	if c.p == nil {
		return nil
	}
	p := c.p
	c.p = nil
	runtime.SetFinalizer(c, nil)
	return call(func() C.kvp_status { return C.kvp_cache_destroy(p) })
}

func (c *Cache) handle() (*C.kvp_cache, error) {
	p := c.ptr()
	if p == nil {
		return nil, &Error{Code: int32(C.KVP_ERR_INVALID_HANDLE), Name: ErrInvalidHandle.Name, Message: "cache is closed"}
	}
	return p, nil
}

// View is a strided view of one layer (no copy). It keeps the Cache reachable; it becomes
// invalid when the cache is closed (reads then report false).
type View struct {
	cache *Cache
	t     C.kvp_tensor
}

// View calls kvp_cache_get_view.
func (c *Cache) View(layer uint32, kind uint32) (*View, error) {
	p, err := c.handle()
	if err != nil {
		return nil, err
	}
	v := &View{cache: c}
	err = call(func() C.kvp_status { return C.kvp_cache_get_view(p, C.uint32_t(layer), C.kvp_view_kind(kind), &v.t) })
	runtime.KeepAlive(c)
	if err != nil {
		return nil, err
	}
	return v, nil
}

// Shape returns the extent of each dimension.
func (v *View) Shape() []int64 {
	s := make([]int64, int(v.t.ndim))
	for i := range s {
		s[i] = int64(v.t.shape[i])
	}
	return s
}

// F32 reads one f32 element; ok is false for a bad index, another dtype, or a closed cache.
func (v *View) F32(index ...int64) (float32, bool) {
	if v.cache.p == nil || v.t.dtype != C.KVP_DTYPE_F32 || len(index) != int(v.t.ndim) {
		return 0, false
	}
	off := int64(0)
	for i, x := range index {
		if x < 0 || x >= int64(v.t.shape[i]) {
			return 0, false
		}
		off += x * int64(v.t.strides[i])
	}
	val := *(*float32)(unsafe.Add(v.t.data, off*4))
	runtime.KeepAlive(v.cache)
	return val, true
}

// BatchRequest is one request of a step for BuildMetadata.
type BatchRequest struct {
	NumComputed, NumScheduled int64
	PageIDs                   []int32
}

// Metadata owns runtime metadata (kvp_metadata).
type Metadata struct{ p *C.kvp_metadata }

// BuildMetadata calls kvp_metadata_build. order[row] is the index of the request in that row:
// pack the new keys and values in this order.
func BuildMetadata(cfg *Config, reqs []BatchRequest) (*Metadata, []int, error) {
	n := len(reqs)
	// Everything handed to C lives in C memory (no Go pointers inside C-visible structs).
	creqs := (*[1 << 20]C.kvp_batch_request)(C.calloc(C.size_t(n+1), C.size_t(unsafe.Sizeof(C.kvp_batch_request{}))))[: n+1 : n+1]
	defer C.free(unsafe.Pointer(&creqs[0]))
	for i, r := range reqs {
		var pages *C.int32_t
		if len(r.PageIDs) > 0 {
			pages = (*C.int32_t)(C.malloc(C.size_t(4 * len(r.PageIDs))))
			defer C.free(unsafe.Pointer(pages))
			C.memcpy(unsafe.Pointer(pages), unsafe.Pointer(&r.PageIDs[0]), C.size_t(4*len(r.PageIDs)))
		}
		creqs[i] = C.kvp_batch_request{num_computed: C.int64_t(r.NumComputed), num_scheduled: C.int64_t(r.NumScheduled),
			page_ids: pages, num_pages: C.int64_t(len(r.PageIDs))}
	}
	order := make([]C.int32_t, n+1)
	var out *C.kvp_metadata
	err := call(func() C.kvp_status {
		return C.kvp_metadata_build(&cfg.raw, &creqs[0], C.uint32_t(n), nil, &order[0], &out)
	})
	if err != nil {
		return nil, nil, err
	}
	m := &Metadata{p: out}
	runtime.SetFinalizer(m, (*Metadata).finalize)
	rows := []int{}
	for _, o := range order[:n] {
		if o >= 0 {
			rows = append(rows, int(o))
		}
	}
	return m, rows, nil
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
	return call(func() C.kvp_status { return C.kvp_metadata_destroy(p) })
}

// elements is the element count of shape, or false for a negative extent or a count that
// overflows int (a wrapped product must never make a short slice look long enough).
func elements(shape [3]int) (int, bool) {
	n := 1
	for _, x := range shape {
		if x < 0 || (x != 0 && n > math.MaxInt/x) {
			return 0, false
		}
		n *= x
	}
	return n, true
}

func hostTensor(data []float32, shape [3]int) (*C.kvp_tensor, error) {
	n, ok := elements(shape)
	if !ok || len(data) != n {
		return nil, &Error{Code: int32(C.KVP_ERR_INVALID_ARGUMENT), Name: ErrInvalidArgument.Name,
			Message: fmt.Sprintf("%d elements for shape %v", len(data), shape)}
	}
	t := (*C.kvp_tensor)(C.calloc(1, C.size_t(unsafe.Sizeof(C.kvp_tensor{}))))
	t.data = C.malloc(C.size_t(4 * (n + 1)))
	if n > 0 {
		C.memcpy(t.data, unsafe.Pointer(&data[0]), C.size_t(4*n))
	}
	t.dtype = C.KVP_DTYPE_F32
	t.ndim = 3
	t.shape[0], t.shape[1], t.shape[2] = C.int64_t(shape[0]), C.int64_t(shape[1]), C.int64_t(shape[2])
	t.strides[0], t.strides[1], t.strides[2] = C.int64_t(shape[1]*shape[2]), C.int64_t(shape[2]), 1
	t.device_type = C.KVP_DEVICE_CPU
	return t, nil
}

func freeTensor(t *C.kvp_tensor) {
	if t != nil {
		C.free(t.data)
		C.free(unsafe.Pointer(t))
	}
}

// Concatenate calls kvp_concatenate: key and value are [T, H, D] row-major f32 data, rows in
// the order returned by BuildMetadata.
func (c *Cache) Concatenate(layer uint32, key, value []float32, shape [3]int, md *Metadata) error {
	p, err := c.handle()
	if err != nil {
		return err
	}
	k, err := hostTensor(key, shape)
	if err != nil {
		return err
	}
	defer freeTensor(k)
	v, err := hostTensor(value, shape)
	if err != nil {
		return err
	}
	defer freeTensor(v)
	err = call(func() C.kvp_status { return C.kvp_concatenate(p, C.uint32_t(layer), k, v, md.ptr(), nil) })
	runtime.KeepAlive(c)
	runtime.KeepAlive(md)
	return err
}

// AttentionOptions are the options of Cache.Attention (kvp_attention_options); zero means
// default for every field, so the zero value is plain causal attention with the reference's
// default scale, no window, no soft cap, no sinks and unit fp8 scales.
type AttentionOptions struct {
	// SoftmaxScale σ multiplies every logit; finite and positive. 0 = the reference's default:
	// 1.0 for a v3 cache, 1/sqrt(head_dim) for a v2 cache. Models pass their own scale, usually
	// 1/sqrt(head_dim).
	SoftmaxScale float32
	// LogitsSoftCap: s <- cap*tanh(s/cap) after the scale (and KScale), before masking; 0 = no cap.
	LogitsSoftCap float32
	// SlidingWindow W: a query at position p sees keys p-W+1 … p. 0 = no window; negative is
	// refused (ErrInvalidArgument).
	SlidingWindow int32
	// KScale and VScale dequantise the stored keys (every logit) and values (the weighted sum);
	// 0 = 1.
	KScale, VScale float32
	// Sinks holds one sink logit per query head: it takes part in the softmax normalisation only
	// (-Inf = no sink). nil = no sinks.
	Sinks []float32
}

// Attention calls kvp_attention on a CPU cache: it writes key and value into one layer exactly
// as Concatenate with the same metadata would, then attends every query token to its request's
// keys and values, read in place from the pages, and stores the result in out.
//
// shape is {T, Hq, Hkv, D}: queries and out hold [T, Hq, D], key and value [T, Hkv, D], all
// row-major f32 with rows in the order returned by BuildMetadata; Hkv is the cache's KV head
// count and Hq a multiple of it (query head h reads KV head h/(Hq/Hkv)). With key and value both
// nil the call only reads (keys written before by Concatenate); one without the other is
// ErrInvalidArgument. opts nil means the defaults. Every row of out is written (rows that no
// processed request owns become 0); on an error neither the cache nor out has changed.
func (c *Cache) Attention(layer uint32, queries, key, value []float32, shape [4]int, md *Metadata,
	opts *AttentionOptions, out []float32) error {
	p, err := c.handle()
	if err != nil {
		return err
	}
	qShape, kvShape := [3]int{shape[0], shape[1], shape[3]}, [3]int{shape[0], shape[2], shape[3]}
	q, err := hostTensor(queries, qShape)
	if err != nil {
		return err
	}
	defer freeTensor(q)
	o, err := hostTensor(out, qShape)
	if err != nil {
		return err
	}
	defer freeTensor(o)
	var k, v *C.kvp_tensor
	if key != nil {
		if k, err = hostTensor(key, kvShape); err != nil {
			return err
		}
		defer freeTensor(k)
	}
	if value != nil {
		if v, err = hostTensor(value, kvShape); err != nil {
			return err
		}
		defer freeTensor(v)
	}
	var sinks *C.float
	if opts != nil && len(opts.Sinks) > 0 {
		sinks = (*C.float)(C.malloc(C.size_t(4 * len(opts.Sinks))))
		defer C.free(unsafe.Pointer(sinks))
		C.memcpy(unsafe.Pointer(sinks), unsafe.Pointer(&opts.Sinks[0]), C.size_t(4*len(opts.Sinks)))
	}
	var co C.kvp_attention_options
	err = call(func() C.kvp_status {
		if st := C.kvp_attention_options_init(&co, C.uint32_t(unsafe.Sizeof(co))); st != C.KVP_OK {
			return st
		}
		if opts != nil {
			co.softmax_scale = C.float(opts.SoftmaxScale)
			co.logits_soft_cap = C.float(opts.LogitsSoftCap)
			co.sliding_window = C.int32_t(opts.SlidingWindow)
			co.k_scale = C.float(opts.KScale)
			co.v_scale = C.float(opts.VScale)
			co.num_sinks = C.uint32_t(len(opts.Sinks))
			co.sinks = sinks
		}
		return C.kvp_attention(p, C.uint32_t(layer), q, k, v, md.ptr(), &co, o, nil)
	})
	runtime.KeepAlive(c)
	runtime.KeepAlive(md)
	if err != nil {
		return err
	}
	if len(out) > 0 {
		C.memcpy(unsafe.Pointer(&out[0]), o.data, C.size_t(4*len(out)))
	}
	return nil
}
