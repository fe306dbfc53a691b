package kvpages

/*
#include <stdlib.h>
#include <kvpages.h>
*/
import "C"

import (
	"strconv"
	"unsafe"
)

// Dtype is an element type (KVP_DTYPE_*). String gives the reference name ("bf16").
type Dtype uint32

// Element types. F64 and the fnuz fp8 variants are known by name only: no cache stores them.
const (
	DtypeDefault       Dtype = C.KVP_DTYPE_INVALID // the default where one exists (bf16)
	DtypeF32           Dtype = C.KVP_DTYPE_F32
	DtypeF16           Dtype = C.KVP_DTYPE_F16
	DtypeBF16          Dtype = C.KVP_DTYPE_BF16
	DtypeF8E4M3FN      Dtype = C.KVP_DTYPE_F8_E4M3FN
	DtypeF8E5M2        Dtype = C.KVP_DTYPE_F8_E5M2
	DtypeF64           Dtype = C.KVP_DTYPE_F64
	DtypeF8E4M3FNUZ    Dtype = C.KVP_DTYPE_F8_E4M3FNUZ
	DtypeF8E4M3B11FNUZ Dtype = C.KVP_DTYPE_F8_E4M3B11FNUZ
	DtypeF8E5M2FNUZ    Dtype = C.KVP_DTYPE_F8_E5M2FNUZ
)

// ParseDtype looks a dtype up by name (kvp_dtype_from_string): "bf16", "bfloat16", "fp8", ...
func ParseDtype(name string) (Dtype, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var out C.kvp_dtype
	err := call(func() C.kvp_status { return C.kvp_dtype_from_string(cs, &out) })
	return Dtype(out), err
}

// String is the canonical name (kvp_dtype_name), or "Dtype(n)" for an unknown value.
func (d Dtype) String() string {
	if n := C.kvp_dtype_name(C.kvp_dtype(d)); n != nil {
		return C.GoString(n)
	}
	return "Dtype(" + itoa(int64(d)) + ")"
}

// Bits is the width of one element (kvp_dtype_bits), 0 for an unknown dtype.
func (d Dtype) Bits() int { return int(C.kvp_dtype_bits(C.kvp_dtype(d))) }

// Packing is the number of elements that share a 32-bit word (kvp_dtype_packing).
func (d Dtype) Packing() (int64, error) {
	var out C.int64_t
	err := call(func() C.kvp_status { return C.kvp_dtype_packing(C.kvp_dtype(d), &out) })
	return int64(out), err
}

// Layout is a storage layout version (KVP_LAYOUT_*); String gives "v2" or "v3".
type Layout uint32

// Layout versions.
const (
	LayoutDefault Layout = C.KVP_LAYOUT_DEFAULT // v3
	LayoutV2      Layout = C.KVP_LAYOUT_V2
	LayoutV3      Layout = C.KVP_LAYOUT_V3
)

// ParseLayout looks a layout up by name, "v2" or "v3" (kvp_layout_from_string).
func ParseLayout(name string) (Layout, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var out C.kvp_layout
	err := call(func() C.kvp_status { return C.kvp_layout_from_string(cs, &out) })
	return Layout(out), err
}

// String is "v2" or "v3" (kvp_layout_name), or "Layout(n)" for anything else.
func (l Layout) String() string {
	if n := C.kvp_layout_name(C.kvp_layout(l)); n != nil {
		return C.GoString(n)
	}
	return "Layout(" + itoa(int64(l)) + ")"
}

// DeviceType is where a cache or tensor lives (KVP_DEVICE_*, DLPack's device codes).
type DeviceType int32

// Device types. The zero value means the CPU wherever a device is optional.
const (
	DeviceCPU  DeviceType = C.KVP_DEVICE_CPU
	DeviceCUDA DeviceType = C.KVP_DEVICE_CUDA
)

// String is "cpu" or "cuda".
func (t DeviceType) String() string {
	switch t {
	case 0, DeviceCPU:
		return "cpu"
	case DeviceCUDA:
		return "cuda"
	}
	return "DeviceType(" + itoa(int64(t)) + ")"
}

// Device names a device: the CPU (the zero value) or a CUDA ordinal.
type Device struct {
	Type DeviceType // 0 or DeviceCPU: the host; DeviceCUDA: the GPU with ordinal ID
	ID   int32
}

// CPU is the host.
var CPU = Device{Type: DeviceCPU}

// CUDA is the CUDA device with ordinal id.
func CUDA(id int) Device { return Device{Type: DeviceCUDA, ID: int32(id)} }

func (d Device) ctype() C.kvp_device_type {
	if d.Type == 0 {
		return C.KVP_DEVICE_CPU
	}
	return C.kvp_device_type(d.Type)
}

// IsCPU reports whether d is the host.
func (d Device) IsCPU() bool { return d.Type == 0 || d.Type == DeviceCPU }

func (d Device) String() string {
	if d.IsCPU() {
		return "cpu"
	}
	return d.Type.String() + ":" + itoa(int64(d.ID))
}

// DeviceCount is the number of CUDA devices this build can use (kvp_device_count): 0 without
// CUDA, a driver or a GPU.
func DeviceCount() (int, error) {
	var n C.int32_t
	err := call(func() C.kvp_status { return C.kvp_device_count(&n) })
	return int(n), err
}

// ViewKind selects a view of a layer (KVP_VIEW_*).
type ViewKind uint32

// View kinds: the layer's pages, the reference's flattened pages, the keys and values (correct
// for every layout), and the reference's literal key/value slices.
const (
	ViewPages           ViewKind = C.KVP_VIEW_PAGES
	ViewFlat            ViewKind = C.KVP_VIEW_FLAT
	ViewKeys            ViewKind = C.KVP_VIEW_KEYS
	ViewValues          ViewKind = C.KVP_VIEW_VALUES
	ViewReferenceKeys   ViewKind = C.KVP_VIEW_REFERENCE_KEYS
	ViewReferenceValues ViewKind = C.KVP_VIEW_REFERENCE_VALUES
)

// F16 is an IEEE binary16 value, as its bits.
type F16 uint16

// BF16 is a bfloat16 value, as its bits.
type BF16 uint16

// F8E4M3FN is an fp8 e4m3fn value (finite only, max 448), as its bits.
type F8E4M3FN uint8

// F8E5M2 is an fp8 e5m2 value (IEEE-like, max 57344), as its bits.
type F8E5M2 uint8

// Element is a Go type for each storage dtype: float32 and the bit-pattern types.
type Element interface {
	float32 | F16 | BF16 | F8E4M3FN | F8E5M2
}

// InputElement is an element type that Concatenate accepts as keys and values.
type InputElement interface {
	float32 | F16 | BF16
}

// DtypeOf is the dtype of an element type.
func DtypeOf[T Element]() Dtype {
	var z T
	switch any(z).(type) {
	case float32:
		return DtypeF32
	case F16:
		return DtypeF16
	case BF16:
		return DtypeBF16
	case F8E4M3FN:
		return DtypeF8E4M3FN
	default:
		return DtypeF8E5M2
	}
}

func slicePtr[T any](s []T) unsafe.Pointer {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Pointer(&s[0])
}

// Convert converts src into dst (same length) with the cache's rounding (kvp_convert):
// round to nearest even, no saturation (beyond the range is ±Inf, or NaN for e4m3fn).
// Widening is exact.
func Convert[D, S Element](dst []D, src []S) error {
	if len(dst) != len(src) {
		return newError(ErrInvalidArgument, "convert: %d source elements but room for %d", len(src), len(dst))
	}
	return convertRaw(slicePtr(src), DtypeOf[S](), slicePtr(dst), DtypeOf[D](), len(src))
}

func convertRaw(src unsafe.Pointer, sd Dtype, dst unsafe.Pointer, dd Dtype, n int) error {
	return call(func() C.kvp_status {
		return C.kvp_convert(src, C.kvp_dtype(sd), dst, C.kvp_dtype(dd), C.size_t(n))
	})
}

// FromFloat32 converts f32 values to element type T (as the cache would store them).
func FromFloat32[T Element](src []float32) []T {
	dst := make([]T, len(src))
	must(Convert(dst, src))
	return dst
}

// ToFloat32 widens elements of type T to f32 (exact).
func ToFloat32[T Element](src []T) []float32 {
	dst := make([]float32, len(src))
	must(Convert(dst, src))
	return dst
}

// must panics on an error that only a broken library could return (kvp_convert between two
// known dtypes with equal lengths cannot fail).
func must(err error) {
	if err != nil {
		panic("kvpages: " + err.Error())
	}
}

func one[D, S Element](x S) D {
	var out D
	must(convertRaw(unsafe.Pointer(&x), DtypeOf[S](), unsafe.Pointer(&out), DtypeOf[D](), 1))
	return out
}

// Float32 widens x to f32.
func (x F16) Float32() float32 { return one[float32](x) }

// Float32 widens x to f32.
func (x BF16) Float32() float32 { return one[float32](x) }

// Float32 widens x to f32.
func (x F8E4M3FN) Float32() float32 { return one[float32](x) }

// Float32 widens x to f32.
func (x F8E5M2) Float32() float32 { return one[float32](x) }

// ToF16 rounds f to binary16.
func ToF16(f float32) F16 { return one[F16](f) }

// ToBF16 rounds f to bfloat16.
func ToBF16(f float32) BF16 { return one[BF16](f) }

// ToF8E4M3FN rounds f to fp8 e4m3fn.
func ToF8E4M3FN(f float32) F8E4M3FN { return one[F8E4M3FN](f) }

// ToF8E5M2 rounds f to fp8 e5m2.
func ToF8E5M2(f float32) F8E5M2 { return one[F8E5M2](f) }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// CDiv is cdiv(a, b) with floor division (kvp_cdiv).
func CDiv(a, b int64) (int64, error) {
	var out C.int64_t
	err := call(func() C.kvp_status { return C.kvp_cdiv(C.int64_t(a), C.int64_t(b), &out) })
	return int64(out), err
}

// AlignToMultiple is cdiv(v, m) * m (kvp_align_to_multiple).
func AlignToMultiple(v, m int64) (int64, error) {
	var out C.int64_t
	err := call(func() C.kvp_status { return C.kvp_align_to_multiple(C.int64_t(v), C.int64_t(m), &out) })
	return int64(out), err
}

// PreviousPowerOf2 is the largest power of two ≤ n, or 0 when n ≤ 0.
func PreviousPowerOf2(n int64) int64 { return int64(C.kvp_previous_power_of_2(C.int64_t(n))) }

// PageSizeBytes is the reference's get_page_size_bytes (kvp_page_size_bytes); it ignores the
// head_dim-64 layout: use Config.LayoutInfo for true sizes.
func PageSizeBytes(pageSize, numKVHeads, headSize int64, dtype Dtype) (int64, error) {
	var out C.int64_t
	err := call(func() C.kvp_status {
		return C.kvp_page_size_bytes(C.int64_t(pageSize), C.int64_t(numKVHeads), C.int64_t(headSize), C.kvp_dtype(dtype), &out)
	})
	return int64(out), err
}

// NumSlicesPerKVCacheUpdatePage is the reference's v2 update batching factor for a page size in
// bytes (kvp_num_slices_per_kv_cache_update_page).
func NumSlicesPerKVCacheUpdatePage(pageSizeBytes int64) (int64, error) {
	var out C.int64_t
	err := call(func() C.kvp_status {
		return C.kvp_num_slices_per_kv_cache_update_page(C.int64_t(pageSizeBytes), &out)
	})
	return int64(out), err
}
