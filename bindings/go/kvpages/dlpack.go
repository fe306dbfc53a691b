package kvpages

/*
#include <kvpages.h>
#include <kvpages/dlpack.h>

static void kvpgo_dlpack_delete(DLManagedTensor *t) {
  if (t && t->deleter) t->deleter(t);
}
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// DLPackTensor owns a DLManagedTensor* exported from a cache (kvp_cache_export_dlpack): a
// zero-copy DLPack view of one layer. It keeps its Cache reachable (the data borrows the
// cache's memory), but Close on the cache still invalidates the data: release or hand over the
// tensor first.
//
// Ownership: the DLPackTensor owns the descriptor until Release (which calls its deleter once)
// or Detach (which hands it, and the duty to call the deleter exactly once, to a DLPack
// consumer such as a C or Python library). A tensor neither released nor detached is released
// by a finalizer.
type DLPackTensor struct {
	p     *C.DLManagedTensor
	cache *Cache
}

// ExportDLPack exports one view of one layer as a DLPack tensor, without copying.
func (c *Cache) ExportDLPack(layer uint32, kind ViewKind) (*DLPackTensor, error) {
	var out *C.DLManagedTensor
	err := c.do(func(p *C.kvp_cache) C.kvp_status {
		return C.kvp_cache_export_dlpack(p, C.uint32_t(layer), C.kvp_view_kind(kind), 0, &out)
	})
	if err != nil {
		return nil, err
	}
	t := &DLPackTensor{p: out, cache: c}
	runtime.SetFinalizer(t, (*DLPackTensor).Release)
	return t, nil
}

// Pointer is the DLManagedTensor* (borrowed; nil once released or detached).
func (t *DLPackTensor) Pointer() unsafe.Pointer { return unsafe.Pointer(t.p) }

// Detach hands the DLManagedTensor* over: the caller (or the consumer it passes it to) must
// call its deleter exactly once, and must stop using the data when the cache is closed.
func (t *DLPackTensor) Detach() unsafe.Pointer {
	p := t.p
	t.p, t.cache = nil, nil
	runtime.SetFinalizer(t, nil)
	return unsafe.Pointer(p)
}

// AdoptDLPack takes ownership of a DLManagedTensor* (for example one handed over by Detach):
// the result calls its deleter on Release or in its finalizer. It does not keep any Cache
// reachable: the data stays valid only while the cache it came from is open.
func AdoptDLPack(p unsafe.Pointer) *DLPackTensor {
	t := &DLPackTensor{p: (*C.DLManagedTensor)(p)}
	runtime.SetFinalizer(t, (*DLPackTensor).Release)
	return t
}

// Release calls the tensor's deleter (once; later calls are no-ops).
func (t *DLPackTensor) Release() {
	if p := t.Detach(); p != nil {
		C.kvpgo_dlpack_delete((*C.DLManagedTensor)(p))
	}
}

// Shape is the tensor's shape (nil once released or detached).
func (t *DLPackTensor) Shape() []int64 {
	if t.p == nil {
		return nil
	}
	d := &t.p.dl_tensor
	return append([]int64(nil), unsafe.Slice((*int64)(unsafe.Pointer(d.shape)), int(d.ndim))...)
}

// Strides is the tensor's strides in elements (nil once released or detached).
func (t *DLPackTensor) Strides() []int64 {
	if t.p == nil || t.p.dl_tensor.strides == nil {
		return nil
	}
	d := &t.p.dl_tensor
	return append([]int64(nil), unsafe.Slice((*int64)(unsafe.Pointer(d.strides)), int(d.ndim))...)
}

// DataType is the DLPack type: code (0 int, 1 uint, 2 float, 4 bfloat), bits and lanes.
func (t *DLPackTensor) DataType() (code, bits uint8, lanes uint16) {
	if t.p == nil {
		return 0, 0, 0
	}
	d := t.p.dl_tensor.dtype
	return uint8(d.code), uint8(d.bits), uint16(d.lanes)
}

// Device is the tensor's device (DLPack's device codes equal DeviceType's).
func (t *DLPackTensor) Device() Device {
	if t.p == nil {
		return Device{}
	}
	d := t.p.dl_tensor.device
	return Device{Type: DeviceType(d.device_type), ID: int32(d.device_id)}
}

// Data is the address of the first element (data + byte_offset): a host address for a CPU
// cache, a device address for a CUDA cache. It is valid until the cache is closed.
func (t *DLPackTensor) Data() uintptr {
	if t.p == nil {
		return 0
	}
	d := &t.p.dl_tensor
	return uintptr(d.data) + uintptr(d.byte_offset)
}
