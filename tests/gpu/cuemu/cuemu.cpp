// Host emulation of the CUDA runtime subset in include/cuda_runtime_api.h (see there).
#include "cuda_runtime_api.h"

#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <set>
#include <memory>
#include <vector>

struct CUstream_st {
  int device = 0;            // the device that was current when the stream was created
  bool legacy = false;       // a device's legacy default stream
  bool capturing = false;
  bool relaxed = false;      // captures in cudaStreamCaptureModeRelaxed
  bool invalidated = false;  // an illegal call during the capture: cudaStreamEndCapture fails
  bool blocking = true;      // created without cudaStreamNonBlocking: synchronises with the legacy stream
  std::vector<std::function<void()>> ops;   // recorded while capturing
  std::deque<std::function<void()>> queue;  // enqueued, not yet run ("on the GPU")
  uint64_t enqueued = 0, completed = 0;     // operations ever enqueued / run
};
// An event marks a position in one stream's queue: it has completed once everything enqueued
// before its cudaEventRecord has run.
struct CUevent_st {
  int device = 0;  // current when the event was created: it can only be recorded on that device's streams
  cudaStream_t stream = nullptr;
  uint64_t target = 0;
};
struct CUgraph_st { std::vector<std::function<void()>> ops; };
struct CUgraphExec_st { std::vector<std::function<void()>> ops; };

namespace cuemu {
struct Alloc {
  size_t bytes;
  int device;  // owning device, or -1 for pinned host memory (cudaHostAlloc)
};
static std::map<uintptr_t, Alloc> g_allocs;   // device + pinned allocations
// The emulated GPUs: CUEMU_DEVICES of them (default 2, so that code which must keep to its own
// device and restore the caller's is tested), device d with 80 GiB >> d of memory.
struct Device {
  CUstream_st legacy;      // its legacy default stream (0 or cudaStreamLegacy while it is current)
  CUstream_st per_thread;  // its per-thread default stream (cudaStreamPerThread; one host thread here)
  size_t allocated = 0;
  size_t total = 0;
  cudaError_t fault = cudaSuccess;  // sticky: set by cuemu_inject_fault, returned by every later call
};
static std::vector<Device> &devices() {
  static std::vector<Device> d = [] {
    const char *e = std::getenv("CUEMU_DEVICES");
    const int n = e != nullptr && std::atoi(e) > 0 ? std::atoi(e) : 2;
    std::vector<Device> v(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      v[static_cast<size_t>(i)].legacy.device = i;
      v[static_cast<size_t>(i)].legacy.legacy = true;
      v[static_cast<size_t>(i)].per_thread.device = i;  // blocking: it synchronises with the legacy stream
      v[static_cast<size_t>(i)].total = (size_t(80) << 30) >> i;
    }
    return v;
  }();
  return d;
}
static int g_dev = 0;                         // the current device
// The sticky fault of a device (cudaSuccess when it has none).
static cudaError_t fault_of(int device) { return devices()[static_cast<size_t>(device)].fault; }
static int g_kernel_device = -1;              // the device of the kernel running now, or -1
static std::set<cudaStream_t> g_streams;      // streams created and not destroyed
static std::set<cudaEvent_t> g_events;        // events created and not destroyed
static std::vector<cudaStream_t> g_captures;  // streams capturing now
static long g_launches = 0, g_blocks = 0;
static cudaError_t g_last_error = cudaSuccess;  // what cudaGetLastError returns (failed launches)

static void die(const char *what) {
  std::fprintf(stderr, "cuemu: %s\n", what);
  std::abort();
}

// The capture rules of the CUDA runtime. While a stream captures in a mode other than relaxed
// (global and thread-local forbid the same calls here: there is one host thread), calls that
// may synchronise or allocate (cudaMalloc, cudaFree, cudaHostAlloc, cudaFreeHost,
// synchronous cudaMemcpy / cudaMemset, cudaStreamSynchronize, cudaStreamQuery,
// cudaDeviceSynchronize, cudaEventQuery, cudaEventSynchronize) fail with cudaErrorStreamCaptureUnsupported and
// invalidate the capture; work on the legacy default stream while a blocking stream captures
// fails with cudaErrorStreamCaptureImplicit and invalidates it too; cudaStreamEndCapture then fails with
// cudaErrorStreamCaptureInvalidated. So code that claims to be capturable is held to it here.
// Invalidates the captures `applies` selects; true if there was one.
template <class Pred>
static bool invalidate_captures(Pred applies, const char *what) {
  bool any = false;
  for (cudaStream_t c : g_captures)
    if (applies(c)) c->invalidated = any = true;
  if (any) std::fprintf(stderr, "cuemu: %s during stream capture: the capture is invalidated\n", what);
  return any;
}
// This (the one) host thread's mode for potentially unsafe calls (cudaThreadExchangeStreamCaptureMode).
static cudaStreamCaptureMode g_thread_mode = cudaStreamCaptureModeGlobal;
static cudaError_t capture_unsafe(const char *what) {
  if (g_thread_mode == cudaStreamCaptureModeRelaxed) return cudaSuccess;  // the thread opted out
  return invalidate_captures([](cudaStream_t c) { return !c->relaxed; }, what) ? cudaErrorStreamCaptureUnsupported
                                                                               : cudaSuccess;
}
static bool blocking_capture() {
  for (cudaStream_t c : g_captures)
    if (c->blocking) return true;
  return false;
}
// The stream a handle names: 0 and cudaStreamLegacy the current device's legacy default stream,
// cudaStreamPerThread its per-thread default stream, anything else a stream created here.
static cudaStream_t resolve(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy) return &devices()[g_dev].legacy;
  if (s == cudaStreamPerThread) return &devices()[g_dev].per_thread;
  return s;
}
// Work enqueued on stream s (resolved): refused on the legacy stream next to a blocking capture
// (which it invalidates), and on a stream whose capture was invalidated.
static cudaError_t enqueue_check(cudaStream_t s, const char *what) {
  if (s->legacy)
    return invalidate_captures([](cudaStream_t c) { return c->blocking; }, what) ? cudaErrorStreamCaptureImplicit
                                                                                 : cudaSuccess;
  return s->capturing && s->invalidated ? cudaErrorStreamCaptureInvalidated : cudaSuccess;
}

// Asynchronous streams. Work enqueued on a stream does not run when it is enqueued: it waits in
// the stream's queue, in order, until something makes the host wait for it (a stream, event or
// device synchronisation, an event query that answers "ready", a synchronous cudaMemcpy, a
// cudaFree, a copy to pageable host memory). So a host that reads results, or reuses a pinned
// buffer an enqueued copy still reads, before it has waited sees the old bytes, as it may on a
// GPU. The legacy stream's implicit synchronisation with blocking streams is kept by running
// what the new work would wait for before enqueuing it.
static void run_until(cudaStream_t q, uint64_t target) {
  while (q->completed < target) {
    std::function<void()> op = std::move(q->queue.front());
    q->queue.pop_front();
    op();
    ++q->completed;
  }
}
static void drain(cudaStream_t q) { run_until(q, q->enqueued); }
static void drain_blocking(int device) {
  drain(&devices()[device].per_thread);
  for (cudaStream_t s : g_streams)
    if (s->blocking && s->device == device) drain(s);
}
static void drain_device(int device) {
  drain(&devices()[device].legacy);
  drain(&devices()[device].per_thread);
  for (cudaStream_t s : g_streams)
    if (s->device == device) drain(s);
}
static void drain_all() {
  for (size_t d = 0; d < devices().size(); ++d) drain_device(static_cast<int>(d));
}
// Enqueues op on s (resolved; records it when s is capturing). Call after enqueue_check.
static void enqueue(cudaStream_t s, std::function<void()> op) {
  if (s->capturing) {
    s->ops.push_back(std::move(op));
    return;
  }
  if (s->legacy)
    drain_blocking(s->device);  // legacy work waits for the blocking streams' earlier work
  else if (s->blocking)
    drain(&devices()[s->device].legacy);  // and blocking streams' work waits for earlier legacy work
  s->queue.push_back(std::move(op));
  ++s->enqueued;
}
// The allocation that holds [p, p + n), or nullptr.
static const Alloc *find_alloc(const void *p, size_t n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(a);
  if (it == g_allocs.begin()) return nullptr;
  --it;
  return a >= it->first && a + n <= it->first + it->second.bytes ? &it->second : nullptr;
}
static bool pinned(const void *p) {
  const Alloc *a = find_alloc(p, 1);
  return a != nullptr && a->device < 0;
}

// Accesses by kernels (and by device-side copies) must fall inside one allocation, and inside the
// allocation of `base` when it is given (so an index that runs past a buffer is caught even when it
// lands in a neighbouring allocation); a kernel may touch pinned host memory and its own device's
// memory, not another device's (no peer access).
void check_access(const void *p, size_t n, size_t align, bool write, const void *base) {
  const char *kind = write ? "store" : "load";
  if (align > 1 && reinterpret_cast<uintptr_t>(p) % align != 0) {
    std::fprintf(stderr, "cuemu: misaligned %s of %zu bytes at %p\n", kind, n, p);
    std::abort();
  }
  const Alloc *a = find_alloc(p, n);
  if (a == nullptr) {
    std::fprintf(stderr, "cuemu: %s of %zu bytes at %p is outside every device allocation\n", kind, n, p);
    std::abort();
  }
  if (base != nullptr && find_alloc(base, 1) != a) {
    std::fprintf(stderr, "cuemu: %s of %zu bytes at %p is outside the buffer at %p it indexes\n", kind, n, p, base);
    std::abort();
  }
  if (g_kernel_device >= 0 && a->device >= 0 && a->device != g_kernel_device) {
    std::fprintf(stderr, "cuemu: a kernel on device %d makes a %s at %p in the memory of device %d\n",
                 g_kernel_device, kind, p, a->device);
    std::abort();
  }
}

// ------------------------------------------------------------------------------------------------
// Fibers

enum State { kRunnable, kAtBlock, kAtWarp, kDone };
struct Fiber {
  ucontext_t uc;
  Ctx c;
  State st = kRunnable;
  bool vote = false;
  unsigned result = 0;
  std::unique_ptr<char[]> stack;
};
static constexpr size_t kStack = 256 * 1024;
static std::vector<Fiber> g_fibers;
static ucontext_t g_sched;
static int g_cur = -1;
static std::function<void()> *g_body = nullptr;
static Ctx g_host_ctx;

const Ctx &ctx() {
  if (g_cur < 0) return g_host_ctx;
  return g_fibers[g_cur].c;
}

static void fiber_entry() {
  (*g_body)();
  g_fibers[g_cur].st = kDone;
  swapcontext(&g_fibers[g_cur].uc, &g_sched);
}

void syncthreads() {
  Fiber &f = g_fibers[g_cur];
  f.st = kAtBlock;
  swapcontext(&f.uc, &g_sched);
}

unsigned ballot(bool pred) {
  Fiber &f = g_fibers[g_cur];
  f.st = kAtWarp;
  f.vote = pred;
  swapcontext(&f.uc, &g_sched);
  return g_fibers[g_cur].result;
}

static void run_block(std::function<void()> &body, dim3 b, dim3 grid, dim3 block) {
  const int n = static_cast<int>(block.x * block.y * block.z);
  if (static_cast<int>(g_fibers.size()) < n) {
    g_fibers.resize(n);
    for (auto &f : g_fibers)
      if (!f.stack) f.stack.reset(new char[kStack]);
  }
  g_body = &body;
  static ucontext_t g_template;
  static bool have_template = false;
  if (!have_template) {
    getcontext(&g_template);
    have_template = true;
  }
  for (int i = 0; i < n; ++i) {
    Fiber &f = g_fibers[i];
    f.c.tid = dim3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
    f.c.bid = b;
    f.c.bdim = block;
    f.c.gdim = grid;
    f.st = kRunnable;
    f.uc = g_template;  // getcontext once, not once per fiber and block (it is a system call)
    f.uc.uc_stack.ss_sp = f.stack.get();
    f.uc.uc_stack.ss_size = kStack;
    f.uc.uc_link = nullptr;
    makecontext(&f.uc, fiber_entry, 0);
  }
  // Threads run in a shuffled order, reshuffled for every block: a read of shared memory that
  // lacks the __syncthreads after another thread's write then sees the old value in some blocks,
  // instead of always running after the writer as thread-index order would make it.
  static uint64_t order_seed = 0x2545F4914F6CDD1Dull;
  static std::vector<int> order;
  order.resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  for (int i = n - 1; i > 0; --i) {
    order_seed ^= order_seed << 13;
    order_seed ^= order_seed >> 7;
    order_seed ^= order_seed << 17;
    std::swap(order[static_cast<size_t>(i)], order[order_seed % static_cast<uint64_t>(i + 1)]);
  }
  for (;;) {
    bool ran = false;
    for (int i : order) {
      if (g_fibers[i].st != kRunnable) continue;
      g_cur = i;
      swapcontext(&g_sched, &g_fibers[i].uc);
      ran = true;
    }
    g_cur = -1;
    // Resolve warp ballots: all non-done lanes of a warp waiting.
    bool released = false;
    for (int w = 0; w * 32 < n; ++w) {
      int waiting = 0, live = 0;
      unsigned mask = 0;
      for (int l = 0; l < 32 && w * 32 + l < n; ++l) {
        Fiber &f = g_fibers[w * 32 + l];
        if (f.st == kDone) continue;
        ++live;
        if (f.st == kAtWarp) {
          ++waiting;
          if (f.vote) mask |= 1u << l;
        }
      }
      if (live > 0 && waiting == live) {
        if (live != 32 && live != n - w * 32) die("ballot with exited lanes");
        for (int l = 0; l < 32 && w * 32 + l < n; ++l) {
          Fiber &f = g_fibers[w * 32 + l];
          if (f.st == kAtWarp) {
            f.result = mask;
            f.st = kRunnable;
          }
        }
        released = true;
      }
    }
    int done = 0, at_block = 0;
    for (int i = 0; i < n; ++i) {
      if (g_fibers[i].st == kDone) ++done;
      if (g_fibers[i].st == kAtBlock) ++at_block;
    }
    if (done == n) break;
    if (at_block > 0 && at_block + done == n) {
      if (done > 0) die("__syncthreads after some threads exited");
      for (int i = 0; i < n; ++i) g_fibers[i].st = kRunnable;
      released = true;
    }
    if (!ran && !released) die("deadlock: threads wait at different barriers");
  }
}

cudaError_t launch(std::function<void()> body, dim3 grid, dim3 block, cudaStream_t s) {
  const int device = g_dev;
  auto run = [body, grid, block, device]() mutable {
    ++g_launches;
    g_kernel_device = device;
    // Blocks run one at a time in a shuffled order (a GPU gives no order either), so results
    // that depend on block order show up as test failures.
    std::vector<dim3> order;
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) order.emplace_back(x, y, z);
    static uint64_t seed = 0x9E3779B97F4A7C15ull;
    for (size_t i = order.size(); i > 1; --i) {
      seed ^= seed << 13;
      seed ^= seed >> 7;
      seed ^= seed << 17;
      std::swap(order[i - 1], order[seed % i]);
    }
    for (const dim3& b : order) {
      ++g_blocks;
      run_block(body, b, grid, block);
    }
    g_kernel_device = -1;
  };
  // Like cudaLaunchKernel: a failed launch returns its error and also leaves it as the last error.
  // A kernel can only be launched into a stream of the current device.
  s = resolve(s);
  if (fault_of(g_dev) != cudaSuccess) return g_last_error = fault_of(g_dev);
  if (s->device != g_dev) return g_last_error = cudaErrorInvalidResourceHandle;
  if (const cudaError_t e = enqueue_check(s, "a kernel launch on the legacy default stream"); e != cudaSuccess)
    return g_last_error = e;
  enqueue(s, std::move(run));
  return cudaSuccess;
}
}  // namespace cuemu

using namespace cuemu;

static void *track(size_t n, int device) {
  if (device >= 0 && n > devices()[device].total - devices()[device].allocated) return nullptr;
  void *p = std::aligned_alloc(256, (n + 255) / 256 * 256 + 256);
  if (p == nullptr) return nullptr;
  std::memset(p, 0xCD, n);  // device memory is not zero: catch missing zero fills
  g_allocs[reinterpret_cast<uintptr_t>(p)] = Alloc{n, device};
  if (device >= 0) devices()[device].allocated += n;
  return p;
}
static void untrack(void *p) {
  if (p == nullptr) return;
  auto it = g_allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == g_allocs.end()) die("free of an unknown pointer");
  if (it->second.device >= 0) devices()[it->second.device].allocated -= it->second.bytes;
  g_allocs.erase(it);
  std::free(p);
}

#define CUEMU_UNSAFE(what)                   \
  do {                                       \
    cudaError_t e_ = capture_unsafe(what);   \
    if (e_ != cudaSuccess) return e_;        \
  } while (0)
#define CUEMU_ENQUEUE(s, what)                  \
  do {                                          \
    CUEMU_FAULT((s)->device);                   \
    cudaError_t e_ = enqueue_check(s, what);    \
    if (e_ != cudaSuccess) return e_;           \
  } while (0)
// A device with a sticky fault answers every call with it.
#define CUEMU_FAULT(device)                                           \
  do {                                                                \
    if (fault_of(device) != cudaSuccess) return fault_of(device);     \
  } while (0)

extern "C" {
static bool valid_device(int d) { return d >= 0 && d < static_cast<int>(devices().size()); }
cudaError_t cudaGetDeviceCount(int *n) { *n = static_cast<int>(devices().size()); return cudaSuccess; }
cudaError_t cudaGetDevice(int *d) { *d = g_dev; return cudaSuccess; }
cudaError_t cudaSetDevice(int d) {
  if (!valid_device(d)) return g_last_error = cudaErrorInvalidDevice;
  g_dev = d;
  return cudaSuccess;
}
// The emulated GPU's SM count: 2, or CUEMU_SMS (132 = an H100/H200), which changes how the
// kernels' grids are sized (rows per block).
static int sm_count() {
  static const int n = [] {
    const char *e = std::getenv("CUEMU_SMS");
    const int v = e != nullptr ? std::atoi(e) : 0;
    return v > 0 ? v : 2;
  }();
  return n;
}
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr, int d) {
  if (!valid_device(d)) return g_last_error = cudaErrorInvalidDevice;
  *v = sm_count();
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *f, size_t *t) {
  const Device &d = devices()[g_dev];
  *t = d.total;
  *f = d.total - d.allocated;
  return cudaSuccess;
}
cudaError_t cudaGetLastError(void) {
  if (fault_of(g_dev) != cudaSuccess) return fault_of(g_dev);  // sticky: not cleared
  cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return fault_of(g_dev) != cudaSuccess ? fault_of(g_dev) : g_last_error; }
cudaError_t cuemu_inject_fault(int device) {
  if (!valid_device(device)) return cudaErrorInvalidDevice;
  Device &d = devices()[static_cast<size_t>(device)];
  d.fault = cudaErrorIllegalAddress;
  auto drop = [](cudaStream_t s) {
    s->queue.clear();
    s->completed = s->enqueued;
  };
  drop(&d.legacy);
  drop(&d.per_thread);
  for (cudaStream_t s : g_streams)
    if (s->device == device) drop(s);
  return cudaSuccess;
}
// Names and messages of the errors the emulation returns (the runtime's texts).
struct ErrorText {
  cudaError_t code;
  const char *name, *text;
};
static const ErrorText kErrorTexts[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorNotReady, "cudaErrorNotReady", "device not ready"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorIllegalAddress, "cudaErrorIllegalAddress", "an illegal memory access was encountered"},
    {cudaErrorStreamCaptureUnsupported, "cudaErrorStreamCaptureUnsupported",
     "operation not permitted when stream is capturing"},
    {cudaErrorStreamCaptureInvalidated, "cudaErrorStreamCaptureInvalidated",
     "operation failed due to a previous error during capture"},
    {cudaErrorStreamCaptureImplicit, "cudaErrorStreamCaptureImplicit",
     "operation would make the legacy stream depend on a capturing blocking stream"},
};
static const ErrorText *error_text(cudaError_t e) {
  for (const ErrorText &t : kErrorTexts)
    if (t.code == e) return &t;
  return nullptr;
}
const char *cudaGetErrorName(cudaError_t e) {
  const ErrorText *t = error_text(e);
  return t != nullptr ? t->name : "cudaErrorEmulated";
}
const char *cudaGetErrorString(cudaError_t e) {
  const ErrorText *t = error_text(e);
  return t != nullptr ? t->text : "emulated error";
}
cudaError_t cudaMalloc(void **p, size_t n) {
  CUEMU_FAULT(g_dev);
  CUEMU_UNSAFE("cudaMalloc");
  *p = track(n, g_dev);
  return *p ? cudaSuccess : g_last_error = cudaErrorMemoryAllocation;
}
// cudaFree and cudaFreeHost wait for the device first (as the runtime does when memory is freed).
// On a device with a sticky fault the memory is still released, and the fault reported.
cudaError_t cudaFree(void *p) {
  CUEMU_UNSAFE("cudaFree");
  drain_all();
  untrack(p);
  return fault_of(g_dev);
}
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned) {
  CUEMU_UNSAFE("cudaHostAlloc");
  *p = track(n, -1);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void *p) {
  CUEMU_UNSAFE("cudaFreeHost");
  drain_all();
  untrack(p);
  return cudaSuccess;
}
cudaError_t cudaHostGetDevicePointer(void **d, void *h, unsigned) { *d = h; return cudaSuccess; }
static void do_memcpy(void *d, const void *s, size_t n, cudaMemcpyKind k) {
  if (k == cudaMemcpyHostToDevice || k == cudaMemcpyDeviceToDevice) check_access(d, n, 1, true);
  if (k == cudaMemcpyDeviceToHost || k == cudaMemcpyDeviceToDevice) check_access(s, n, 1, false);
  std::memmove(d, s, n);
}
static void do_memset(void *p, int v, size_t n) {
  check_access(p, n, 1, true);
  std::memset(p, v, n);
}
// Synchronous cudaMemset of device memory is asynchronous with respect to the host: it is
// legacy-stream work like any other.
cudaError_t cudaMemset(void *p, int v, size_t n) {
  CUEMU_FAULT(g_dev);
  CUEMU_UNSAFE("cudaMemset");
  enqueue(resolve(nullptr), [=] { do_memset(p, v, n); });
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s) {
  s = resolve(s);
  CUEMU_ENQUEUE(s, "cudaMemsetAsync on the legacy default stream");
  enqueue(s, [=] { do_memset(p, v, n); });
  return cudaSuccess;
}
// Synchronous cudaMemcpy: legacy-stream work that has completed when the call returns.
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind k) {
  CUEMU_FAULT(g_dev);
  CUEMU_UNSAFE("cudaMemcpy");
  cudaStream_t legacy = resolve(nullptr);
  enqueue(legacy, [=] { do_memcpy(d, s, n, k); });
  drain(legacy);
  return cudaSuccess;
}
// Asynchronous copies run in stream order, with the runtime's exceptions for pageable host
// memory: from pageable memory the source is staged before the call returns (the caller may
// reuse it at once), and to pageable memory the call returns once the copy has completed.
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k, cudaStream_t st) {
  st = resolve(st);
  CUEMU_ENQUEUE(st, "cudaMemcpyAsync on the legacy default stream");
  const bool capturing = st->capturing;
  if (!capturing && k == cudaMemcpyHostToDevice && !pinned(s)) {
    auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char *>(s),
                                                               static_cast<const unsigned char *>(s) + n);
    enqueue(st, [=] { do_memcpy(d, staged->data(), n, k); });
    return cudaSuccess;
  }
  enqueue(st, [=] { do_memcpy(d, s, n, k); });
  if (!capturing && k == cudaMemcpyDeviceToHost && !pinned(d)) drain(st);
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
  *s = new CUstream_st;
  (*s)->device = g_dev;
  (*s)->blocking = (flags & cudaStreamNonBlocking) == 0;
  g_streams.insert(*s);
  return cudaSuccess;
}
cudaError_t cudaStreamGetDevice(cudaStream_t s, int *device) {
  *device = resolve(s)->device;
  return cudaSuccess;
}
// The stream's remaining work still runs (here: now); events recorded on it stay complete.
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (s == nullptr || g_streams.count(s) == 0) return cudaErrorInvalidValue;
  if (s->capturing) die("cudaStreamDestroy of a capturing stream");
  drain(s);
  for (cudaEvent_t e : g_events)
    if (e->stream == s) e->stream = nullptr;
  g_streams.erase(s);
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  s = resolve(s);
  CUEMU_FAULT(s->device);
  CUEMU_UNSAFE("cudaStreamSynchronize");
  drain(s);
  return cudaSuccess;
}
// Whether the stream's queued work has run; here the query itself never runs it.
cudaError_t cudaStreamQuery(cudaStream_t s) {
  s = resolve(s);
  CUEMU_FAULT(s->device);
  CUEMU_UNSAFE("cudaStreamQuery");
  if (s->completed == s->enqueued) return cudaSuccess;
  return g_last_error = cudaErrorNotReady;
}
cudaError_t cudaDeviceSynchronize(void) {
  CUEMU_FAULT(g_dev);
  CUEMU_UNSAFE("cudaDeviceSynchronize");
  drain_device(g_dev);
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus *st) {
  // On the legacy stream while a blocking stream captures: an error, but only a query (the
  // capture stays valid).
  s = resolve(s);
  CUEMU_FAULT(s->device);
  if (s->legacy && blocking_capture()) return cudaErrorStreamCaptureImplicit;
  *st = s->capturing ? (s->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive)
                            : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode m) {
  s = resolve(s);
  if (s->legacy || s->capturing) return cudaErrorStreamCaptureUnsupported;
  s->capturing = true;
  s->relaxed = m == cudaStreamCaptureModeRelaxed;
  s->invalidated = false;
  s->ops.clear();
  g_captures.push_back(s);
  return cudaSuccess;
}
cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode *mode) {
  const cudaStreamCaptureMode previous = g_thread_mode;
  g_thread_mode = *mode;
  *mode = previous;
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
  s = resolve(s);
  if (!s->capturing) return cudaErrorInvalidValue;
  g_captures.erase(std::find(g_captures.begin(), g_captures.end(), s));
  s->capturing = false;
  if (s->invalidated) {
    s->ops.clear();
    *g = nullptr;
    return cudaErrorStreamCaptureInvalidated;
  }
  *g = new CUgraph_st{s->ops};
  s->ops.clear();
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long) { *e = new CUgraphExec_st{g->ops}; return cudaSuccess; }
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
  s = resolve(s);
  CUEMU_ENQUEUE(s, "cudaGraphLaunch on the legacy default stream");
  if (s->capturing) die("cudaGraphLaunch into a capturing stream is not emulated");
  for (auto &op : e->ops) enqueue(s, op);
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) { delete e; return cudaSuccess; }
cudaError_t cudaGraphDestroy(cudaGraph_t g) { delete g; return cudaSuccess; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) {
  *e = new CUevent_st;
  (*e)->device = g_dev;
  g_events.insert(*e);
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t, cudaEvent_t) { *ms = 1.0f; return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d) {
  if (!valid_device(d)) return g_last_error = cudaErrorInvalidDevice;
  std::strcpy(p->name, "cuemu");
  p->multiProcessorCount = sm_count();
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (e == nullptr || g_events.erase(e) == 0) return cudaErrorInvalidValue;
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  s = resolve(s);
  CUEMU_ENQUEUE(s, "cudaEventRecord on the legacy default stream");
  // Real CUDA turns this into a graph node; nothing in kvpages records events into a capture.
  if (s->capturing) die("cudaEventRecord into a capturing stream is not emulated");
  if (s->device != e->device) return g_last_error = cudaErrorInvalidResourceHandle;
  enqueue(s, [] {});  // a marker, so the event also keeps the legacy stream's implicit ordering
  e->stream = s;
  e->target = e->stream->enqueued;
  return cudaSuccess;
}
static bool event_done(cudaEvent_t e) { return e->stream == nullptr || e->stream->completed >= e->target; }
// While the work before the event is queued, a query answers "not ready" every other time and,
// as the runtime does, leaves that in the last-error state, so callers must handle both answers
// and must not leak the second to their own callers; the other times the "GPU" finishes that work
// and the query answers "ready".
cudaError_t cudaEventQuery(cudaEvent_t e) {
  CUEMU_FAULT(e->device);
  CUEMU_UNSAFE("cudaEventQuery");
  if (event_done(e)) return cudaSuccess;
  static bool ready = false;
  ready = !ready;
  if (!ready) return g_last_error = cudaErrorNotReady;
  run_until(e->stream, e->target);
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  CUEMU_FAULT(e->device);
  CUEMU_UNSAFE("cudaEventSynchronize");
  if (!event_done(e)) run_until(e->stream, e->target);
  return cudaSuccess;
}
}
