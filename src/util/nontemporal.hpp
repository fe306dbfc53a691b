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

// Bytes one thread writes from which non-temporal stores beat ordinary ones, for a destination
// that is not in the caches (cached == false) or one that is (cached == true): KVP_STREAM_KIB KiB
// for both when the environment sets it (read once; 0: always). Else, not cached: 128 KiB;
// cached: the size of the core's private (L2) cache, from sysconf(_SC_LEVEL2_CACHE_SIZE), clamped
// to [2 MiB, 8 MiB] (2 MiB where unknown). Between the two the caller asks lines_cached().
// Not cached is what a model step leaves (the other layers' writes, their weights and attention
// come between two writes of a layer, which lands on new slots): there streaming won from 64
// tokens of 8 x 128 (256 KiB) and 256 tokens of 1 x 128 (128 KiB) up, 1.1-1.6x, while at 16 tokens
// of 8 x 128 (64 KiB) it was even and at 16 tokens of 1 x 128 (8 KiB) ordinary stores won
// (docs/benchmarks.md, "cold destinations"). Cached is a loop that writes the same slots again,
// or a step whose writes all fit the caches with nothing else between them.
// Measured (2-core Xeon VM with AVX-512, L2 2 MiB, a hypervisor-reported 260 MiB L3): a
// scattered write of 512-byte and 4 KiB rows with 64-byte stores, repeated over the same
// destination, runs 0.45-0.67x as fast with streaming stores at 1 MiB, and 1.5-2.7x as fast from
// 2 MiB up to 128 MiB (decode-like rows, one per 8 KiB page: 1.6x already at 1 MiB). An L3-based
// rule such as glibc's (3/4 of the per-thread L3 share: 99 MiB on that VM, 240 MiB on the AMD VM
// below) streams far too late where the reported L3 is the host's. The floor of 2 MiB is for
// cores whose L2 is smaller than their share of a real L3: on a 2-vCPU AMD EPYC (Zen 4) VM (L2
// 1 MiB, a 32 MiB L3 per 8 cores), repeated kvp_concatenate writes of 1 MiB ran 1.4-2.5x as fast
// with ordinary stores (8 x 128 bf16 at 256 tokens: 38.6 -> 28.1 us decode, 39.8 -> 25.5 us
// prefill; f32 -> f16: 93 -> 43 us), while at 4 MiB streaming still won for decode batches.
size_t nontemporal_threshold(bool cached) noexcept;

// Whether the cache lines at `lines` are (likely) in the CPU caches, asked of the memory: each
// is loaded after the one before it has arrived, and the loads must all arrive in about the time
// of cache hits. A line in memory costs 100-500 ns (a VM's nested page walk included), a cached
// one 10-30 ns; measured on a 2-vCPU AMD EPYC (Zen 4) VM, 2026-12-07: 4 KiB rows of a 1 MiB
// write just made, 8 lines in 70-280 ns; the same after reading 64 MiB, 2.1-5.1 us. Stops at the
// first line that shows the answer is no, so a cold destination costs about one miss (which the
// write would have paid). Where reading the clock alone takes 100 ns or more (a clock source the
// vDSO cannot read), the answer is always no.
bool lines_cached(const unsigned char* const* lines, int n) noexcept;

// Orders the non-temporal stores before later stores (and before other threads see a flag).
inline void fence_nontemporal() noexcept {
#if KVP_HAVE_NONTEMPORAL
  _mm_sfence();
#endif
}

}  // namespace kvp::detail
