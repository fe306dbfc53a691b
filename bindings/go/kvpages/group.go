package kvpages

/*
#include <stdlib.h>
#include <string.h>
#include <kvpages.h>
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// CacheGroup is a cache group (kvp_cache_group, since 1.4): every shard of a sharded config in
// one process, written with one call per layer. Shard i is tensor rank i / DataParallelSize,
// data rank i % DataParallelSize; every per-shard slice of its methods is in that order.
type CacheGroup struct {
	p      *C.kvp_cache_group
	shards map[[2]int32]*Cache // the borrowed shards handed out, by (tp, dp); closed on Close
}

// NewCacheGroup calls kvp_cache_group_create with every shard on the device cfg was budgeted
// for (the CPU by default).
func NewCacheGroup(cfg *Config) (*CacheGroup, error) {
	return createGroup(cfg, cfg.device, nil)
}

// NewCacheGroupCUDA calls kvp_cache_group_create with shard i on CUDA device deviceIDs[i] (one
// ordinal per shard; without CUDA the error is ErrNoDevice).
func NewCacheGroupCUDA(cfg *Config, deviceIDs []int32) (*CacheGroup, error) {
	return createGroup(cfg, CUDA(0), deviceIDs)
}

func createGroup(cfg *Config, dev Device, deviceIDs []int32) (*CacheGroup, error) {
	var out *C.kvp_cache_group
	err := withCacheOptions(dev, func(o *C.kvp_cache_options) C.kvp_status {
		return C.kvp_cache_group_create(&cfg.raw, (*C.int32_t)(slicePtr(deviceIDs)), C.uint32_t(len(deviceIDs)), o,
			&out)
	})
	if err != nil {
		return nil, err
	}
	g := &CacheGroup{p: out, shards: map[[2]int32]*Cache{}}
	runtime.SetFinalizer(g, (*CacheGroup).Close)
	return g, nil
}

// Close destroys the group and every shard in it; the Caches Shard returned are closed with it.
// Close again is a no-op.
func (g *CacheGroup) Close() error {
	if g.p == nil {
		return nil
	}
	p := g.p
	g.p = nil
	for _, c := range g.shards {
		_ = c.Close()
	}
	g.shards = nil
	runtime.SetFinalizer(g, nil)
	return call(func() C.kvp_status { return C.kvp_cache_group_destroy(p) })
}

func (g *CacheGroup) handle() (*C.kvp_cache_group, error) {
	if g.p == nil {
		return nil, newError(ErrInvalidHandle, "cache group is closed")
	}
	return g.p, nil
}

// NumShards calls kvp_cache_group_get_num_shards: KVHeadShards x DataParallelSize.
func (g *CacheGroup) NumShards() (int, error) {
	p, err := g.handle()
	if err != nil {
		return 0, err
	}
	var n C.uint32_t
	err = call(func() C.kvp_status { return C.kvp_cache_group_get_num_shards(p, &n) })
	runtime.KeepAlive(g)
	return int(n), err
}

// Shard calls kvp_cache_group_get_shard: the Cache of shard (tpRank, dpRank), borrowed from the
// group. It is used like any Cache but keeps the group reachable, its Close only detaches it,
// and it is closed when the group is. The same *Cache while it is open.
func (g *CacheGroup) Shard(tpRank, dpRank int32) (*Cache, error) {
	p, err := g.handle()
	if err != nil {
		return nil, err
	}
	if c := g.shards[[2]int32{tpRank, dpRank}]; c != nil && c.p != nil {
		return c, nil
	}
	var out *C.kvp_cache
	err = call(func() C.kvp_status { return C.kvp_cache_group_get_shard(p, C.int32_t(tpRank), C.int32_t(dpRank), &out) })
	if err != nil {
		return nil, err
	}
	c := &Cache{p: out, group: g}
	g.shards[[2]int32{tpRank, dpRank}] = c
	return c, nil
}

// GroupConcatenate calls kvp_cache_group_concatenate on CPU shards: keys[i] and values[i]
// (row-major f32, f16 or bf16) of shape shapes[i] are shard i's new keys and values, the full
// [T, H, D] or the shard's own heads; md is the whole cache's metadata. Every shard is
// validated before any is written: an error names the shard and changes none. The slices are
// copied to C memory for the call (cgo does not let C memory hold pointers into Go memory).
func GroupConcatenate[T InputElement](g *CacheGroup, layer uint32, keys, values [][]T, shapes [][3]int,
	md *Metadata) error {
	n := len(keys)
	if len(values) != n || len(shapes) != n {
		return newError(ErrInvalidArgument, "%d keys, %d values and %d shapes: one of each per shard", n, len(values),
			len(shapes))
	}
	for i := range keys {
		if err := checkLen("key", len(keys[i]), shapes[i][:]); err != nil {
			return err
		}
		if err := checkLen("value", len(values[i]), shapes[i][:]); err != nil {
			return err
		}
	}
	return g.concatenate(layer, n, md, nil, func(i int, kt, vt *C.kvp_tensor) {
		size := int64(unsafe.Sizeof(keys[i][0])) // InputElement: never zero-sized
		for _, x := range []struct {
			t   *C.kvp_tensor
			src []T
		}{{kt, keys[i]}, {vt, values[i]}} {
			x.t.data = C.malloc(C.size_t(len(x.src)*int(size) + 1))
			C.memcpy(x.t.data, slicePtr(x.src), C.size_t(len(x.src)*int(size)))
			x.t.dtype = C.kvp_dtype(DtypeOf[T]())
			setShape(x.t, [3]int64{int64(shapes[i][0]), int64(shapes[i][1]), int64(shapes[i][2])}, [3]int64{})
		}
	})
}

// Concatenate is the float32 form of GroupConcatenate.
func (g *CacheGroup) Concatenate(layer uint32, keys, values [][]float32, shapes [][3]int, md *Metadata) error {
	return GroupConcatenate(g, layer, keys, values, shapes, md)
}

// ConcatenateDevice calls kvp_cache_group_concatenate with tensors in CUDA device memory:
// shard i's write is enqueued on streams[i] (a cudaStream_t of shard i's device; nil streams
// or a 0 entry: that device's legacy default stream).
func (g *CacheGroup) ConcatenateDevice(layer uint32, keys, values []DeviceTensor, md *Metadata,
	streams []uintptr) error {
	n := len(keys)
	if len(values) != n || (streams != nil && len(streams) != n) {
		return newError(ErrInvalidArgument, "%d keys, %d values and %d streams: one of each per shard", n, len(values),
			len(streams))
	}
	return g.concatenate(layer, n, md, streams, func(i int, kt, vt *C.kvp_tensor) {
		for _, x := range []struct {
			t   *C.kvp_tensor
			src *DeviceTensor
		}{{kt, &keys[i]}, {vt, &values[i]}} {
			*(*uintptr)(unsafe.Pointer(&x.t.data)) = x.src.Ptr
			x.t.dtype = C.kvp_dtype(x.src.Dtype)
			x.t.device_id = C.int32_t(x.src.Device.ID)
			setShape(x.t, x.src.Shape, x.src.Strides)
			x.t.device_type = C.KVP_DEVICE_CUDA
		}
	})
}

// setShape makes t a 3-D CPU tensor of shape (row-major when strides are zero).
func setShape(t *C.kvp_tensor, shape, strides [3]int64) {
	if strides == [3]int64{} {
		strides = [3]int64{shape[1] * shape[2], shape[2], 1}
	}
	t.ndim = 3
	t.device_type = C.KVP_DEVICE_CPU
	for d := 0; d < 3; d++ {
		t.shape[d], t.strides[d] = C.int64_t(shape[d]), C.int64_t(strides[d])
	}
}

// concatenate runs kvp_cache_group_concatenate with n key and value tensors in C memory that
// fill(i, key, value) describes; the data of CPU tensors (C copies fill made) is freed afterwards.
func (g *CacheGroup) concatenate(layer uint32, n int, md *Metadata, streams []uintptr,
	fill func(i int, kt, vt *C.kvp_tensor)) error {
	p, err := g.handle()
	if err != nil {
		return err
	}
	mp, err := md.handle()
	if err != nil {
		return err
	}
	size := C.size_t(unsafe.Sizeof(C.kvp_tensor{}))
	base := (*C.kvp_tensor)(C.calloc(C.size_t(2*n+1), size))
	defer C.free(unsafe.Pointer(base))
	ts := unsafe.Slice(base, 2*n+1)
	cstreams := (*C.kvp_stream)(nil)
	if streams != nil {
		cstreams = (*C.kvp_stream)(C.calloc(C.size_t(n+1), C.size_t(unsafe.Sizeof(C.kvp_stream(nil)))))
		defer C.free(unsafe.Pointer(cstreams))
		for i, s := range streams {
			*(*uintptr)(unsafe.Pointer(&unsafe.Slice(cstreams, n)[i])) = s
		}
	}
	for i := 0; i < n; i++ {
		fill(i, &ts[i], &ts[n+i])
		if ts[i].device_type == C.KVP_DEVICE_CPU {
			defer C.free(ts[i].data)
			defer C.free(ts[n+i].data)
		}
	}
	err = call(func() C.kvp_status {
		return C.kvp_cache_group_concatenate(p, C.uint32_t(layer), &ts[0], &ts[n], C.uint32_t(n), mp, cstreams)
	})
	runtime.KeepAlive(g)
	runtime.KeepAlive(md)
	return err
}
