// The CUDA backend's device code compiled as host C++ against the emulated runtime
// (tests/gpu/cuemu/cuda_runtime_api.h), so the kernels' logic can be tested without a GPU.
#include "backend/cuda/cuda_concat.cu"
