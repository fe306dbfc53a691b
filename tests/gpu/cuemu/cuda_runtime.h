/* See cuda_runtime_api.h: host-only emulation of the CUDA runtime for tests. */
#include "cuda_runtime_api.h"
