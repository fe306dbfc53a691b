// The CUDA kernels (kernels/*.cu) compiled as host C++ against the emulated runtime
// (tests/gpu/cuemu/cuda_runtime_api.h), so their logic can be tested without a GPU.
#include "kernels/concat.cu"
#include "kernels/attention.cu"
