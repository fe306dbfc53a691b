// Non-temporal stores: writes that go around the CPU caches. The destination's cache lines are
// not read for ownership first, so a bulk write moves 2n bytes through memory instead of 3n, and
// it does not evict the caller's working set. For data not read again soon (serialization blobs,
// pages being restored, batches larger than the caches). x86-64 uses SSE2 streaming stores; other
// CPUs plain copies.
#pragma once

#include <cstddef>

#if defined(__SSE2__)
#include <emmintrin.h>
#define KVP_HAVE_NONTEMPORAL 1
#else
#define KVP_HAVE_NONTEMPORAL 0
#endif

namespace kvp::detail {

// memcpy (no overlap) with non-temporal stores for the bulk and a store fence at the end; copies
// under 4 KiB use memcpy.
void copy_nontemporal(void* dst, const void* src, size_t n) noexcept;

// Bytes one thread writes from which non-temporal stores beat ordinary ones for data written
// once and not read back soon: KVP_STREAM_KIB KiB when the environment sets it (read once; 0:
// always), else the size of the core's private (L2) cache, from sysconf(_SC_LEVEL2_CACHE_SIZE),
// clamped to [2 MiB, 8 MiB] (2 MiB where unknown). Which is faster depends on whether the
// destination is still in the caches, which the library cannot see: a model step's writes (the
// other layers, their weights and attention in between) find it evicted, and there streaming won
// from 64 tokens of 8 x 128 up (KVP_STREAM_KIB=0: 1.1-1.6x; docs/benchmarks.md, "cold
// destinations"), while writes that repeat over the same slots find it in the L3 up to its size.
// Measured (2-core Xeon VM with AVX-512, L2 2 MiB, a hypervisor-reported 260 MiB L3): a
// scattered write of 512-byte and 4 KiB rows with 64-byte stores, repeated over the same
// destination, runs 0.45-0.67x as fast with streaming stores at 1 MiB, and 1.5-2.7x as fast from
// 2 MiB up to 128 MiB (decode-like rows, one per 8 KiB page: 1.6x already at 1 MiB). An L3-based
// rule such as glibc's (3/4 of the per-thread L3 share: 99 MiB on that VM, 240 MiB on the AMD VM
// below) streams far too late where the reported L3 is the host's. The floor of 2 MiB is for
// cores whose L2 is smaller than their share of a real L3: on a 2-vCPU AMD EPYC (Zen 4) VM (L2
// 1 MiB, a 32 MiB L3 per 8 cores), kvp_concatenate writes of 1 MiB ran 1.4-2.5x as fast with
// ordinary stores (8 x 128 bf16 at 256 tokens: 38.6 -> 28.1 us decode, 39.8 -> 25.5 us prefill;
// f32 -> f16: 93 -> 43 us), while at 4 MiB streaming still won for decode batches.
size_t nontemporal_threshold() noexcept;

// Orders the non-temporal stores before later stores (and before other threads see a flag).
inline void fence_nontemporal() noexcept {
#if KVP_HAVE_NONTEMPORAL
  _mm_sfence();
#endif
}

}  // namespace kvp::detail
