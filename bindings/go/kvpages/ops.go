package kvpages

/*
#include <string.h>
#include <kvpages.h>

// The tensors point at the caller's Go slices: they are built here, on the C side of the call,
// and live only for the call (cgo allows C to use Go pointers passed as arguments while the call
// runs, but not Go memory that holds them, nor C memory that keeps them).
static float kvpgo_empty[1];

static kvp_tensor kvpgo_tensor(void *data, kvp_dtype dtype, int64_t t, int64_t h, int64_t d) {
  kvp_tensor x;
  memset(&x, 0, sizeof x);
  x.data = data ? data : (void *)kvpgo_empty;
  x.dtype = dtype;
  x.ndim = 3;
  x.shape[0] = t; x.shape[1] = h; x.shape[2] = d;
  x.strides[0] = h * d; x.strides[1] = d; x.strides[2] = 1;
  x.device_type = KVP_DEVICE_CPU;
  return x;
}

static kvp_status kvpgo_concatenate(kvp_cache *c, uint32_t layer, void *k, void *v, kvp_dtype dtype,
                                    int64_t t, int64_t h, int64_t d, const kvp_metadata *md) {
  kvp_tensor kt = kvpgo_tensor(k, dtype, t, h, d), vt = kvpgo_tensor(v, dtype, t, h, d);
  return kvp_concatenate(c, layer, &kt, &vt, md, NULL);
}

static kvp_tensor kvpgo_device_tensor(uintptr_t data, kvp_dtype dtype, const int64_t *shape,
                                      const int64_t *strides, int32_t device_id) {
  kvp_tensor x;
  memset(&x, 0, sizeof x);
  x.data = (void *)data;
  x.dtype = dtype;
  x.ndim = 3;
  for (int i = 0; i < 3; ++i) { x.shape[i] = shape[i]; x.strides[i] = strides[i]; }
  x.device_type = KVP_DEVICE_CUDA;
  x.device_id = device_id;
  return x;
}

static kvp_status kvpgo_concatenate_device(kvp_cache *c, uint32_t layer, uintptr_t k, uintptr_t v,
                                           kvp_dtype dtype, const int64_t *shape, const int64_t *kstrides,
                                           const int64_t *vstrides, int32_t device_id,
                                           const kvp_metadata *md, uintptr_t stream) {
  kvp_tensor kt = kvpgo_device_tensor(k, dtype, shape, kstrides, device_id);
  kvp_tensor vt = kvpgo_device_tensor(v, dtype, shape, vstrides, device_id);
  return kvp_concatenate(c, layer, &kt, &vt, md, (kvp_stream)stream);
}

static kvp_status kvpgo_attention(kvp_cache *c, uint32_t layer, void *q, void *k, void *v, void *out,
                                  int64_t t, int64_t hq, int64_t hkv, int64_t d, const kvp_metadata *md,
                                  int has_opts, float scale, float cap, int32_t window, float kscale,
                                  float vscale, const float *sinks, uint32_t num_sinks) {
  kvp_attention_options o;
  kvp_status st = kvp_attention_options_init(&o, sizeof o);
  if (st != KVP_OK) return st;
  if (has_opts) {
    o.softmax_scale = scale; o.logits_soft_cap = cap; o.sliding_window = window;
    o.k_scale = kscale; o.v_scale = vscale; o.sinks = sinks; o.num_sinks = num_sinks;
  }
  kvp_tensor qt = kvpgo_tensor(q, KVP_DTYPE_F32, t, hq, d), ot = kvpgo_tensor(out, KVP_DTYPE_F32, t, hq, d);
  kvp_tensor kt = kvpgo_tensor(k, KVP_DTYPE_F32, t, hkv, d), vt = kvpgo_tensor(v, KVP_DTYPE_F32, t, hkv, d);
  return kvp_attention(c, layer, &qt, k ? &kt : NULL, v ? &vt : NULL, md, &o, &ot, NULL);
}
*/
import "C"

import (
	"math"
	"runtime"
)

// elements is the element count of shape, or false for a negative extent or a count that
// overflows int (a wrapped product must never make a short slice look long enough).
func elements(shape []int) (int, bool) {
	n := 1
	for _, x := range shape {
		if x < 0 || (x != 0 && n > math.MaxInt/x) {
			return 0, false
		}
		n *= x
	}
	return n, true
}

func checkLen(what string, n int, shape []int) error {
	want, ok := elements(shape)
	if !ok || n != want {
		return newError(ErrInvalidArgument, "%s: %d elements for shape %v", what, n, shape)
	}
	return nil
}

// Concatenate calls kvp_concatenate with host keys and values of shape [T, H, D] (row-major,
// f32, f16 or bf16), rows in the metadata's row order (see ConcatenateRequests to pass them
// per request instead). The slices are passed to C for the call, not copied. The cache is
// unchanged on any error.
func Concatenate[T InputElement](c *Cache, layer uint32, key, value []T, shape [3]int, md *Metadata) error {
	if err := checkLen("key", len(key), shape[:]); err != nil {
		return err
	}
	if err := checkLen("value", len(value), shape[:]); err != nil {
		return err
	}
	mp, err := md.handle()
	if err != nil {
		return err
	}
	err = c.do(func(p *C.kvp_cache) C.kvp_status {
		return C.kvpgo_concatenate(p, C.uint32_t(layer), slicePtr(key), slicePtr(value), C.kvp_dtype(DtypeOf[T]()),
			C.int64_t(shape[0]), C.int64_t(shape[1]), C.int64_t(shape[2]), mp)
	})
	runtime.KeepAlive(md)
	return err
}

// Concatenate is the float32 form of the package function Concatenate.
func (c *Cache) Concatenate(layer uint32, key, value []float32, shape [3]int, md *Metadata) error {
	return Concatenate(c, layer, key, value, shape, md)
}

// ConcatenateRequests writes one layer from per-request keys and values: keys[i] and values[i]
// hold request i's NumScheduled new tokens as [tokens, kv_heads, head_dim] row-major, in the
// order the requests were given to BuildMetadata (nil for inactive requests). They are packed
// in the metadata's decode-first row order (one copy into a Go buffer per call) and written
// with Concatenate, so the order the builder chose never has to be handled by hand.
func ConcatenateRequests[T InputElement](c *Cache, layer uint32, keys, values [][]T, md *Metadata) error {
	cfg, err := c.Config()
	if err != nil {
		return err
	}
	h, d := int(cfg.raw.num_kv_heads), int(cfg.raw.k_headdim)
	k, err := PackRequests(md, keys, h*d)
	if err != nil {
		return err
	}
	v, err := PackRequests(md, values, h*d)
	if err != nil {
		return err
	}
	return Concatenate(c, layer, k, v, [3]int{md.NumTokens(), h, d}, md)
}

// DeviceTensor describes a [T, H, D] tensor in CUDA device memory for ConcatenateDevice: a
// device address (not Go memory), its dtype, shape and strides in elements.
type DeviceTensor struct {
	Ptr     uintptr
	Dtype   Dtype
	Shape   [3]int64
	Strides [3]int64 // zero = row-major
	Device  Device
}

func (t *DeviceTensor) strides() [3]C.int64_t {
	s := t.Strides
	if s == [3]int64{} {
		s = [3]int64{t.Shape[1] * t.Shape[2], t.Shape[2], 1}
	}
	return [3]C.int64_t{C.int64_t(s[0]), C.int64_t(s[1]), C.int64_t(s[2])}
}

// ConcatenateDevice calls kvp_concatenate on a CUDA cache with device-resident keys and values
// (same dtype, shape and device), enqueued on stream (a cudaStream_t, 0 = the legacy default
// stream). The device memory must stay valid until the stream has done the work; the metadata
// is staged by the library during the call. Argument errors are reported synchronously,
// device-side ones through AsyncError.
func (c *Cache) ConcatenateDevice(layer uint32, key, value DeviceTensor, md *Metadata, stream uintptr) error {
	if key.Shape != value.Shape || key.Dtype != value.Dtype || key.Device != value.Device {
		return newError(ErrInvalidArgument, "key and value differ in shape, dtype or device")
	}
	mp, err := md.handle()
	if err != nil {
		return err
	}
	shape := [3]C.int64_t{C.int64_t(key.Shape[0]), C.int64_t(key.Shape[1]), C.int64_t(key.Shape[2])}
	ks, vs := key.strides(), value.strides()
	err = c.do(func(p *C.kvp_cache) C.kvp_status {
		return C.kvpgo_concatenate_device(p, C.uint32_t(layer), C.uintptr_t(key.Ptr), C.uintptr_t(value.Ptr),
			C.kvp_dtype(key.Dtype), &shape[0], &ks[0], &vs[0], C.int32_t(key.Device.ID), mp, C.uintptr_t(stream))
	})
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
// row-major f32 with rows in the metadata's row order; Hkv is the cache's KV head count and Hq
// a multiple of it (query head h reads KV head h/(Hq/Hkv)). With key and value both nil the
// call only reads (keys written before by Concatenate); one without the other is
// ErrInvalidArgument. opts nil means the defaults. Every row of out is written (rows that no
// processed request owns become 0); on an error neither the cache nor out has changed. The
// slices are passed to C for the call, not copied.
func (c *Cache) Attention(layer uint32, queries, key, value []float32, shape [4]int, md *Metadata,
	opts *AttentionOptions, out []float32) error {
	qShape, kvShape := []int{shape[0], shape[1], shape[3]}, []int{shape[0], shape[2], shape[3]}
	if err := checkLen("queries", len(queries), qShape); err != nil {
		return err
	}
	if err := checkLen("out", len(out), qShape); err != nil {
		return err
	}
	if key != nil {
		if err := checkLen("key", len(key), kvShape); err != nil {
			return err
		}
	}
	if value != nil {
		if err := checkLen("value", len(value), kvShape); err != nil {
			return err
		}
	}
	mp, err := md.handle()
	if err != nil {
		return err
	}
	var o AttentionOptions
	if opts != nil {
		o = *opts
	}
	k, v := slicePtr(key), slicePtr(value)
	if key != nil && k == nil {
		k = slicePtr([]float32{0}) // an empty, non-nil slice is a tensor of 0 tokens
	}
	if value != nil && v == nil {
		v = slicePtr([]float32{0})
	}
	hasOpts := C.int(0)
	if opts != nil {
		hasOpts = 1
	}
	err = c.do(func(p *C.kvp_cache) C.kvp_status {
		return C.kvpgo_attention(p, C.uint32_t(layer), slicePtr(queries), k, v, slicePtr(out),
			C.int64_t(shape[0]), C.int64_t(shape[1]), C.int64_t(shape[2]), C.int64_t(shape[3]), mp,
			hasOpts, C.float(o.SoftmaxScale), C.float(o.LogitsSoftCap), C.int32_t(o.SlidingWindow),
			C.float(o.KScale), C.float(o.VScale), (*C.float)(slicePtr(o.Sinks)), C.uint32_t(len(o.Sinks)))
	})
	runtime.KeepAlive(md)
	return err
}
