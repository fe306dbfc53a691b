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

// Cache owns a kvp_cache handle: one page buffer per layer, on the CPU or a CUDA device.
// A cache is not synchronised: calls that modify it must not run concurrently.
type Cache struct {
	p     *C.kvp_cache
	group *CacheGroup // the group a borrowed shard belongs to (kept reachable by it); nil: owned
}

// NewCache calls kvp_cache_create on the device cfg was budgeted for (ConfigOptions.Device):
// the CPU by default; for a CUDA device without CUDA the error is ErrNoDevice.
func NewCache(cfg *Config) (*Cache, error) {
	return createCache(cfg, func(o *C.kvp_cache_options, out **C.kvp_cache) C.kvp_status {
		return C.kvp_cache_create(&cfg.raw, o, out)
	})
}

// NewShard calls kvp_cache_create_shard (since 1.4) on the device cfg was budgeted for: the
// slice tensor rank tpRank and data rank dpRank of a sharded config hold. Its views and layer
// bytes are the local slice; Concatenate takes the whole cache's metadata and the full key and
// value tensors or only the shard's heads (Shard().HeadBegin … HeadEnd). A rank out of range
// is ErrInvalidArgument.
func NewShard(cfg *Config, tpRank, dpRank int32) (*Cache, error) {
	return createCache(cfg, func(o *C.kvp_cache_options, out **C.kvp_cache) C.kvp_status {
		return C.kvp_cache_create_shard(&cfg.raw, C.int32_t(tpRank), C.int32_t(dpRank), o, out)
	})
}

// createCache runs create with cache options for cfg's device.
func createCache(cfg *Config, create func(o *C.kvp_cache_options, out **C.kvp_cache) C.kvp_status) (*Cache, error) {
	var out *C.kvp_cache
	if err := withCacheOptions(cfg.device, func(o *C.kvp_cache_options) C.kvp_status { return create(o, &out) }); err != nil {
		return nil, err
	}
	return ownCache(out), nil
}

// withCacheOptions runs f (one C call) with cache options for dev.
func withCacheOptions(dev Device, f func(o *C.kvp_cache_options) C.kvp_status) error {
	o := (*C.kvp_cache_options)(C.calloc(1, C.size_t(unsafe.Sizeof(C.kvp_cache_options{}))))
	defer C.free(unsafe.Pointer(o))
	return call(func() C.kvp_status {
		if st := C.kvp_cache_options_init(o, C.uint32_t(unsafe.Sizeof(*o))); st != C.KVP_OK {
			return st
		}
		o.device_type = dev.ctype()
		o.device_id = C.int32_t(dev.ID)
		return f(o)
	})
}

func ownCache(p *C.kvp_cache) *Cache {
	c := &Cache{p: p}
	runtime.SetFinalizer(c, (*Cache).finalize)
	return c
}

// FromHandle takes ownership of a kvp_cache* created by C code (for example with
// kvp_cache_create or kvp_deserialize_new): the returned Cache destroys it on Close or in its
// finalizer, so the C side must not destroy it. A pointer that is not a live cache handle is
// refused with ErrInvalidHandle (the library checks its own handle table; nothing is read
// through a foreign pointer) and ownership stays with the caller.
func FromHandle(handle unsafe.Pointer) (*Cache, error) {
	p := (*C.kvp_cache)(handle)
	var t C.kvp_device_type
	if err := call(func() C.kvp_status { return C.kvp_cache_get_device(p, &t, nil) }); err != nil {
		return nil, err
	}
	return ownCache(p), nil
}

// Handle is the kvp_cache* for C code (nil once closed). It is borrowed: the Cache still owns
// it, so keep the Cache reachable (runtime.KeepAlive) and open while C code uses the pointer.
func (c *Cache) Handle() unsafe.Pointer { return unsafe.Pointer(c.p) }

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

// Close destroys the cache (a shard borrowed from a CacheGroup is only detached: the group
// destroys it). Later calls on it return ErrInvalidHandle; Close again is a no-op.
func (c *Cache) Close() error {
	if c.p == nil {
		return nil
	}
	p := c.p
	c.p = nil
	if c.group != nil {
		c.group = nil
		return nil
	}
	runtime.SetFinalizer(c, nil)
	return call(func() C.kvp_status { return C.kvp_cache_destroy(p) })
}

func (c *Cache) handle() (*C.kvp_cache, error) {
	p := c.ptr()
	if p == nil {
		return nil, newError(ErrInvalidHandle, "cache is closed")
	}
	return p, nil
}

// do runs one C call on the cache's handle and keeps the cache reachable until it returns.
func (c *Cache) do(f func(p *C.kvp_cache) C.kvp_status) error {
	p, err := c.handle()
	if err != nil {
		return err
	}
	err = call(func() C.kvp_status { return f(p) })
	runtime.KeepAlive(c)
	return err
}

// Config is the config the cache was created with (kvp_cache_get_config), for its device.
func (c *Cache) Config() (*Config, error) {
	cfg := &Config{raw: emptyRecord()}
	err := c.do(func(p *C.kvp_cache) C.kvp_status {
		if st := C.kvp_cache_get_config(p, &cfg.raw); st != C.KVP_OK {
			return st
		}
		var t C.kvp_device_type
		var id C.int32_t
		st := C.kvp_cache_get_device(p, &t, &id)
		cfg.device = Device{Type: DeviceType(t), ID: int32(id)}
		return st
	})
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// Device is where the cache lives (kvp_cache_get_device).
func (c *Cache) Device() (Device, error) {
	var t C.kvp_device_type
	var id C.int32_t
	err := c.do(func(p *C.kvp_cache) C.kvp_status { return C.kvp_cache_get_device(p, &t, &id) })
	return Device{Type: DeviceType(t), ID: int32(id)}, err
}

// LayoutInfo is the geometry of the cache's layer buffers (kvp_cache_get_layout).
func (c *Cache) LayoutInfo() (LayoutInfo, error) {
	var li C.kvp_layout_info
	li.struct_size = C.uint32_t(unsafe.Sizeof(li))
	if err := c.do(func(p *C.kvp_cache) C.kvp_status { return C.kvp_cache_get_layout(p, &li) }); err != nil {
		return LayoutInfo{}, err
	}
	return layoutInfo(&li), nil
}

// Shard says which slice of its config the cache holds (kvp_cache_get_shard, since 1.4); a
// whole cache holds ranks 0 of sizes 1, every entry and page.
func (c *Cache) Shard() (ShardInfo, error) {
	var si C.kvp_shard_info
	si.struct_size = C.uint32_t(unsafe.Sizeof(si))
	if err := c.do(func(p *C.kvp_cache) C.kvp_status { return C.kvp_cache_get_shard(p, &si) }); err != nil {
		return ShardInfo{}, err
	}
	return shardInfo(&si), nil
}

// LayerBytes is the size of one layer in bytes.
func (c *Cache) LayerBytes() (int, error) {
	li, err := c.LayoutInfo()
	return int(li.LayerBytes), err
}

// ReadLayer calls kvp_cache_read_layer: a copy of one layer's bytes (CPU or CUDA cache).
func (c *Cache) ReadLayer(layer uint32) ([]byte, error) {
	n, err := c.LayerBytes()
	if err != nil {
		return nil, err
	}
	out := make([]byte, n)
	err = c.do(func(p *C.kvp_cache) C.kvp_status {
		return C.kvp_cache_read_layer(p, C.uint32_t(layer), slicePtr(out), C.size_t(n), nil)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// WriteLayer calls kvp_cache_write_layer: data must hold exactly LayerBytes bytes.
func (c *Cache) WriteLayer(layer uint32, data []byte) error {
	return c.do(func(p *C.kvp_cache) C.kvp_status {
		return C.kvp_cache_write_layer(p, C.uint32_t(layer), slicePtr(data), C.size_t(len(data)), nil)
	})
}

// AsyncError reports the cache's sticky asynchronous error (kvp_cache_get_async_error): nil,
// or an *Error with the recorded status and message. CPU caches never have one.
func (c *Cache) AsyncError() error {
	var st C.kvp_status
	var msg error
	err := c.do(func(p *C.kvp_cache) C.kvp_status {
		r := C.kvp_cache_get_async_error(p, &st)
		if r == C.KVP_OK && st != C.KVP_OK {
			// The recorded message is this thread's last message now: read it on this thread.
			msg = call(func() C.kvp_status { return st })
		}
		return r
	})
	if err != nil {
		return err
	}
	return msg
}

// ClearAsyncError clears a recoverable asynchronous error (kvp_cache_clear_async_error);
// a sticky device fault cannot be cleared (ErrDeviceLost).
func (c *Cache) ClearAsyncError() error {
	return c.do(func(p *C.kvp_cache) C.kvp_status { return C.kvp_cache_clear_async_error(p) })
}

// View is a strided view of one layer (no copy). It keeps the Cache reachable; it becomes
// invalid when the cache is closed (reads then fail with ErrInvalidHandle).
type View struct {
	cache *Cache
	t     C.kvp_tensor
}

// View calls kvp_cache_get_view.
func (c *Cache) View(layer uint32, kind ViewKind) (*View, error) {
	v := &View{cache: c}
	err := c.do(func(p *C.kvp_cache) C.kvp_status {
		return C.kvp_cache_get_view(p, C.uint32_t(layer), C.kvp_view_kind(kind), &v.t)
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// Shape is the extent of each dimension.
func (v *View) Shape() []int64 { return dims(&v.t.shape, v.t.ndim) }

// Strides is the stride of each dimension, in elements.
func (v *View) Strides() []int64 { return dims(&v.t.strides, v.t.ndim) }

func dims(a *[C.KVP_MAX_DIMS]C.int64_t, n C.int32_t) []int64 {
	s := make([]int64, int(n))
	for i := range s {
		s[i] = int64(a[i])
	}
	return s
}

// Dtype is the element type of the view (the cache's storage dtype).
func (v *View) Dtype() Dtype { return Dtype(v.t.dtype) }

// Device is where the view's memory lives.
func (v *View) Device() Device {
	return Device{Type: DeviceType(v.t.device_type), ID: int32(v.t.device_id)}
}

// run is the address of n elements along the last dimension from index, and the last
// dimension's stride in bytes. It checks the cache is open, the memory is host memory, and
// the run is inside the view.
func (v *View) run(n int, index []int64) (unsafe.Pointer, uintptr, error) {
	if v.cache.p == nil { // not ptr(): element reads are hot, and v keeps the cache reachable
		return nil, 0, newError(ErrInvalidHandle, "view of a closed cache")
	}
	if v.t.device_type != C.KVP_DEVICE_CPU {
		return nil, 0, newError(ErrUnsupported, "view of a %v cache: read it with Cache.ReadLayer", v.Device())
	}
	nd := int(v.t.ndim)
	if len(index) != nd {
		return nil, 0, newError(ErrInvalidArgument, "%d indices for a view of rank %d", len(index), nd)
	}
	off := int64(0)
	for i, x := range index {
		limit := int64(v.t.shape[i])
		if i == nd-1 {
			limit -= int64(n) - 1
		}
		if x < 0 || x >= limit {
			return nil, 0, newError(ErrInvalidArgument, "index %v (%d elements) outside shape %v", index, n, v.Shape())
		}
		off += x * int64(v.t.strides[i])
	}
	size := int64(v.Dtype().Bits() / 8)
	return unsafe.Add(v.t.data, off*size), uintptr(int64(v.t.strides[nd-1]) * size), nil
}

// ReadView reads len(dst) elements of v along its last dimension, starting at index (one
// entry per dimension), converted from the view's dtype to T (kvp_convert; exact when T is
// the view's dtype or wider). Host caches only.
func ReadView[T Element](v *View, dst []T, index ...int64) error {
	at, stride, err := v.run(len(dst), index)
	if err != nil {
		return err
	}
	from, to := v.Dtype(), DtypeOf[T]()
	if stride == uintptr(from.Bits()/8) || len(dst) <= 1 {
		err = convertRaw(at, from, slicePtr(dst), to, len(dst))
	} else {
		for i := range dst {
			if err = convertRaw(unsafe.Add(at, uintptr(i)*stride), from, unsafe.Pointer(&dst[i]), to, 1); err != nil {
				break
			}
		}
	}
	runtime.KeepAlive(v)
	return err
}

// WriteView stores src into v along its last dimension from index, converted to the view's
// dtype with the cache's rounding. Host caches only.
func WriteView[T Element](v *View, src []T, index ...int64) error {
	at, stride, err := v.run(len(src), index)
	if err != nil {
		return err
	}
	from, to := DtypeOf[T](), v.Dtype()
	if stride == uintptr(to.Bits()/8) || len(src) <= 1 {
		err = convertRaw(slicePtr(src), from, at, to, len(src))
	} else {
		for i := range src {
			if err = convertRaw(unsafe.Pointer(&src[i]), from, unsafe.Add(at, uintptr(i)*stride), to, 1); err != nil {
				break
			}
		}
	}
	runtime.KeepAlive(v)
	return err
}

// ReadF32 is ReadView with float32: dst gets len(dst) elements from index, in any dtype.
func (v *View) ReadF32(dst []float32, index ...int64) error { return ReadView(v, dst, index...) }

// WriteF32 is WriteView with float32.
func (v *View) WriteF32(src []float32, index ...int64) error { return WriteView(v, src, index...) }

// F32 reads one element as f32, whatever the dtype; ok is false for a bad index, a device
// view or a closed cache.
func (v *View) F32(index ...int64) (float32, bool) {
	var x [1]float32
	if ReadView(v, x[:], index...) != nil {
		return 0, false
	}
	return x[0], true
}
