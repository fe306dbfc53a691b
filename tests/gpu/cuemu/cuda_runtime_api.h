/* Host-only emulation of the subset of the CUDA runtime used by kvpages and its GPU tests.
 * Device memory is host memory, on CUEMU_DEVICES devices (default 2): kernels may only be
 * launched into the current device's streams and may only touch their own device's memory.
 * Streams are asynchronous: enqueued work waits in its stream's queue until the host waits for it
 * (synchronisation, a "ready" event query, a synchronous copy, a free), with the runtime's rules
 * for pageable copies and the legacy stream. Kernels run as fibers (one OS thread, ucontext) with
 * real __syncthreads / __ballot_sync semantics, blocks and the threads within each block run in
 * shuffled orders, 16-byte stores and __ldg loads are checked against the device allocations,
 * and stream capture records ops into a replayable graph and enforces the runtime's capture rules
 * (calls that may synchronise or allocate fail and invalidate the capture). For testing kernel
 * logic on machines without a GPU (tests/gpu/tests.cmake, KVPAGES_CUDA_EMULATION_TESTS). */
#ifndef CUEMU_CUDA_RUNTIME_API_H
#define CUEMU_CUDA_RUNTIME_API_H
#include <stddef.h>
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif
typedef enum cudaError {
  cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorInsufficientDriver = 35,
  cudaErrorDevicesUnavailable = 46, cudaErrorNoDevice = 100, cudaErrorInvalidDevice = 101,
  cudaErrorECCUncorrectable = 214, cudaErrorInvalidResourceHandle = 400, cudaErrorNotReady = 600, cudaErrorIllegalAddress = 700,
  cudaErrorLaunchTimeout = 702, cudaErrorAssert = 710, cudaErrorHardwareStackError = 714,
  cudaErrorIllegalInstruction = 715, cudaErrorMisalignedAddress = 716, cudaErrorInvalidAddressSpace = 717,
  cudaErrorInvalidPc = 718, cudaErrorLaunchFailure = 719, cudaErrorSystemDriverMismatch = 803,
  cudaErrorCompatNotSupportedOnDevice = 804, cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901, cudaErrorStreamCaptureImplicit = 906
} cudaError_t;
typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;
typedef struct CUgraph_st *cudaGraph_t;
typedef struct CUgraphExec_st *cudaGraphExec_t;
typedef enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 } cudaMemcpyKind;
typedef enum cudaStreamCaptureStatus { cudaStreamCaptureStatusNone = 0, cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2 } cudaStreamCaptureStatus;
typedef enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal = 0, cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2 } cudaStreamCaptureMode;
typedef enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 } cudaDeviceAttr;
#define CUDART_VERSION 13000
#define cudaStreamNonBlocking 0x01
#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaStreamPerThread ((cudaStream_t)0x2)
#define cudaEventDisableTiming 0x02
#define cudaHostAllocDefault 0x00
#define cudaHostAllocMapped 0x02

cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d);
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorName(cudaError_t e);
const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaMalloc(void **p, size_t n);
cudaError_t cudaFree(void *p);
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned flags);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaHostGetDevicePointer(void **d, void *h, unsigned flags);
cudaError_t cudaMemset(void *p, int v, size_t n);
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s);
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k, cudaStream_t st);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamGetDevice(cudaStream_t s, int *device);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamQuery(cudaStream_t s);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus *st);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode m);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g);
cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode *mode);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags);
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);
struct cudaDeviceProp { char name[256]; int multiProcessorCount; };
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventSynchronize(cudaEvent_t e);

/* Not CUDA: test hooks of the emulation. */
#define CUEMU_RUNTIME 1
/* Puts `device` in the state a faulting kernel leaves: its queued work is dropped and every later
 * runtime call on it returns cudaErrorIllegalAddress (sticky: cudaGetLastError does not clear it). */
cudaError_t cuemu_inject_fault(int device);
#ifdef __cplusplus
}

#include <functional>
#define KVP_CUDA_EMULATION 1
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
namespace cuemu {
struct Ctx { dim3 tid, bid, bdim, gdim; };
const Ctx &ctx();
void syncthreads();
unsigned ballot(bool pred);
cudaError_t launch(std::function<void()> body, dim3 grid, dim3 block, cudaStream_t s);
// Aborts unless [p, p + n) lies inside one device or pinned allocation (the one holding `base`,
// when given) that the running kernel may touch, aligned to `align`.
void check_access(const void *p, size_t n, size_t align, bool write, const void *base = nullptr);
}
#define threadIdx (::cuemu::ctx().tid)
#define blockIdx (::cuemu::ctx().bid)
#define blockDim (::cuemu::ctx().bdim)
#define gridDim (::cuemu::ctx().gdim)
inline void __syncthreads() { ::cuemu::syncthreads(); }
inline unsigned __ballot_sync(unsigned, bool p) { return ::cuemu::ballot(p); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int atomicCAS(int *a, int cmp, int v) { int old = *a; if (old == cmp) *a = v; return old; }
inline void __threadfence_system() {}
inline void __threadfence() {}
inline unsigned atomicAdd(unsigned *a, unsigned v) { unsigned old = *a; *a = old + v; return old; }
template <class T> inline T __ldg(const T *p) { ::cuemu::check_access(p, sizeof(T), sizeof(T), false); return *p; }
#endif
#endif
