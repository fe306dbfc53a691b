# GPU test extras (included from tests/CMakeLists.txt).
# - test_cuda_concatenate, test_cuda_attention, test_cuda_shards, test_cuda_fault and
#   test_serialize_gpu use the CUDA runtime themselves (device buffers, streams, graphs; the first
#   three with the helpers of support/gpu_support.c), and so do the benchmarks
#   bench_cuda_concatenate (device buffers, events, graphs) and bench_serialize (its --cuda
#   limit: pinned copies).
# - A run without a GPU prints "kvpages: no CUDA device" and is reported by ctest as skipped.
find_package(Python3 COMPONENTS Interpreter)
set(KVP_GPU_SUPPORT ${CMAKE_CURRENT_SOURCE_DIR}/support/gpu_support.c)
foreach(t test_cuda_concatenate test_cuda_attention test_cuda_shards)
  target_sources(${t} PRIVATE ${KVP_GPU_SUPPORT})
endforeach()
foreach(t test_cuda_concatenate test_cuda_attention test_cuda_shards test_cuda_fault test_serialize_gpu
        bench_cuda_concatenate bench_serialize)
  if(TARGET ${t} AND KVP_HAS_CUDA)
    target_link_libraries(${t} PRIVATE CUDA::cudart)
  endif()
endforeach()

# Static check of the kernels, no GPU needed: ptxas's registers and local memory per kernel for
# each real architecture built (limits: 64 registers, so at least 4 blocks of 256 threads per SM;
# a 16-byte stack frame). Labelled "cuda".
if(KVP_HAS_CUDA)
  set(KVP_RES_ARCHS)
  foreach(a ${CMAKE_CUDA_ARCHITECTURES})
    if(a MATCHES "^([0-9]+[a-z]?)(-real)?$")
      list(APPEND KVP_RES_ARCHS --arch ${CMAKE_MATCH_1})
    endif()
  endforeach()
  if(NOT KVP_RES_ARCHS)
    set(KVP_RES_ARCHS --arch 90)
  endif()
  if(Python3_Interpreter_FOUND)
    set(KVP_RES_INCLUDES -I${PROJECT_SOURCE_DIR}/include -I${KVP_GEN_INCLUDE})
    foreach(root kernels backend util)
      list(APPEND KVP_RES_INCLUDES -I${KVP_LAYER_ROOTS}/${root})
    endforeach()
    add_test(NAME cuda.kernel_resources
             COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/gpu/kernel_resources.py
                     --nvcc ${CMAKE_CUDA_COMPILER} ${KVP_RES_ARCHS} --max-registers 64 --max-stack 16
                     --source ${PROJECT_SOURCE_DIR}/kernels/concat.cu --match concat_ -- ${KVP_RES_INCLUDES})
    # Attention keeps a tile's 16 rows of accumulators in registers (128 threads per block): the
    # limit catches a blow-up (a dynamically indexed accumulator array goes to local memory).
    add_test(NAME cuda.kernel_resources_attention
             COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/gpu/kernel_resources.py
                     --nvcc ${CMAKE_CUDA_COMPILER} ${KVP_RES_ARCHS} --max-registers 255 --max-stack 128
                     --source ${PROJECT_SOURCE_DIR}/kernels/attention.cu --match attention_ -- ${KVP_RES_INCLUDES})
    set_tests_properties(cuda.kernel_resources_attention PROPERTIES LABELS "cuda" TIMEOUT 600)
    set_tests_properties(cuda.kernel_resources PROPERTIES LABELS "cuda" TIMEOUT 600)
  endif()
endif()

# Optional: the GPU tests against a host-only emulation of the CUDA runtime (tests/gpu/cuemu),
# for machines without a GPU. A second library is linked from the main library's objects and the
# CUDA layer (backend host code and kernels) built as C++ against the emulated runtime (kernels run as fibers with real
# __syncthreads/__ballot_sync semantics; graphs are recorded and replayed). This checks the
# kernels' logic — indexing, conversions, validation, staging, graph capture — not timing or the
# hardware memory model. Labelled "cuemu". Needs no CUDA toolkit.
option(KVPAGES_CUDA_EMULATION_TESTS "Also run the GPU tests against an emulated CUDA runtime" OFF)
if(KVPAGES_CUDA_EMULATION_TESTS)
  set(KVP_EMU_DIR ${CMAKE_CURRENT_SOURCE_DIR}/gpu/cuemu)
  set(KVP_EMU_GEN ${CMAKE_CURRENT_BINARY_DIR}/cuemu_include)
  configure_file(${KVP_EMU_DIR}/features.h.in ${KVP_EMU_GEN}/kvpages/features.h COPYONLY)
  # The CUDA layer (host code and kernels) compiled as C++ against the emulated runtime; every
  # other layer is the main library's objects.
  file(GLOB KVP_EMU_CUDA_HOST CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/cuda/*.cpp)
  list(REMOVE_ITEM KVP_EMU_CUDA_HOST ${PROJECT_SOURCE_DIR}/src/cuda/no_cuda.cpp)
  add_library(kvp_cuda_emu OBJECT ${KVP_EMU_CUDA_HOST} ${KVP_EMU_DIR}/kernels_emu.cpp)
  kvp_layer_root(src/cuda KVP_EMU_CUDA_ROOT)
  kvp_layer_root(kernels KVP_EMU_KERNELS_ROOT)
  target_include_directories(kvp_cuda_emu BEFORE PRIVATE ${KVP_EMU_DIR} ${KVP_EMU_GEN})
  target_include_directories(kvp_cuda_emu PRIVATE ${KVP_EMU_CUDA_ROOT} ${KVP_EMU_KERNELS_ROOT})
  kvp_layer_setup(kvp_cuda_emu USES backend util)
  # Device code compiled as C++: nvcc's pragmas and unsigned builtin indices are expected there, and
  # it reinterprets loaded vectors as CUDA does (no strict aliasing).
  target_compile_options(kvp_cuda_emu PRIVATE -Wno-unknown-pragmas -Wno-sign-compare -fno-strict-aliasing)
  # The emulated runtime itself, with default visibility: the test programs call its cuda* API.
  add_library(cuemu_runtime OBJECT ${KVP_EMU_DIR}/cuemu.cpp)
  target_include_directories(cuemu_runtime PRIVATE ${KVP_EMU_DIR})
  set_target_properties(cuemu_runtime PROPERTIES POSITION_INDEPENDENT_CODE ON)
  add_library(kvpages_cuemu SHARED)
  foreach(layer ${KVP_HOST_LAYERS} kvp_cuda_emu cuemu_runtime)
    target_sources(kvpages_cuemu PRIVATE $<TARGET_OBJECTS:${layer}>)
  endforeach()
  target_include_directories(kvpages_cuemu BEFORE PUBLIC ${KVP_EMU_DIR} ${KVP_EMU_GEN})
  target_include_directories(kvpages_cuemu PUBLIC ${PROJECT_SOURCE_DIR}/include ${KVP_GEN_INCLUDE})
  set_target_properties(kvpages_cuemu PROPERTIES LINKER_LANGUAGE CXX)
  target_link_libraries(kvpages_cuemu PRIVATE ${KVP_LIBRARY_DEPS})
  foreach(t test_cuda_device test_cuda_concatenate test_cuda_attention test_cuda_pool test_serialize_gpu test_cuda_fault
          test_cuda_shards)
    add_executable(${t}_emu ${CMAKE_CURRENT_SOURCE_DIR}/gpu/${t}.c ${CMAKE_CURRENT_SOURCE_DIR}/support/support.c
                   ${CMAKE_CURRENT_SOURCE_DIR}/support/reference.c
                   ${KVP_GPU_SUPPORT})
    target_include_directories(${t}_emu PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/support)
    target_link_libraries(${t}_emu PRIVATE kvpages_cuemu PkgConfig::CMOCKA m)
    add_test(NAME cuemu.${t} COMMAND ${t}_emu)
    set_tests_properties(cuemu.${t} PROPERTIES LABELS "cuemu" TIMEOUT 600)
  endforeach()
  # The shards' union test places its shards round-robin over two devices.
  target_sources(test_cuda_shards_emu PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/support/shards.c)
  set_tests_properties(cuemu.test_cuda_shards PROPERTIES ENVIRONMENT "CUEMU_DEVICES=2")
  # Again with the SM count of an H100/H200: the grids are then sized as on those GPUs (mostly
  # one row per block), where the 2-SM default packs many rows into each block. Slow (about a
  # minute): only in the "slow" test configuration (`ctest -C slow`, which scripts/test.sh runs),
  # not in a plain `ctest`.
  add_test(NAME cuemu.test_cuda_concatenate_132sm COMMAND test_cuda_concatenate_emu CONFIGURATIONS slow)
  set_tests_properties(cuemu.test_cuda_concatenate_132sm PROPERTIES LABELS "cuemu;slow" TIMEOUT 600
                       ENVIRONMENT "CUEMU_SMS=132;KVP_TEST_FUZZ_ROUNDS=32")
  # The CUDA benchmark's program, run once per row (KVP_BENCH_ITERS=1) up to 64 tokens, so the
  # code that will time real GPUs (metadata upload, host- and device-metadata calls, graph
  # capture and replay, the async-error check) has run before it meets one. Its timings mean
  # nothing here (the emulated events report 1 ms).
  add_executable(bench_cuda_concatenate_emu ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_cuda_concatenate.c)
  target_link_libraries(bench_cuda_concatenate_emu PRIVATE kvpages_cuemu m)
  add_test(NAME cuemu.bench_cuda_concatenate COMMAND bench_cuda_concatenate_emu 64 CONFIGURATIONS slow)
  set_tests_properties(cuemu.bench_cuda_concatenate PROPERTIES LABELS "cuemu;slow" TIMEOUT 600
                       ENVIRONMENT "KVP_BENCH_ITERS=1"
                       FAIL_REGULAR_EXPRESSION "no CUDA device")
  # bench_serialize --cuda, once, on a small cache: its pinned-copy limit and the serialization
  # calls on a CUDA cache run before they meet a GPU (the numbers mean nothing here).
  add_executable(bench_serialize_emu ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_serialize.c
                                     ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_support.c)
  target_include_directories(bench_serialize_emu PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/bench)
  target_link_libraries(bench_serialize_emu PRIVATE kvpages_cuemu PkgConfig::XXHASH m)
  target_compile_definitions(bench_serialize_emu PRIVATE KVP_BENCH_HAVE_XXHASH=1)
  add_test(NAME cuemu.bench_serialize COMMAND bench_serialize_emu --cuda --mib 8 --reps 1)
  set_tests_properties(cuemu.bench_serialize PROPERTIES LABELS "cuemu" TIMEOUT 300)
  # The Python binding's CUDA paths (DLPack producers of device memory, streams, layer copies)
  # against the emulated library; needs python3 with numpy and pytest (scripts/install-deps.sh).
  # Not in sanitizer builds: python3 cannot load an ASan-instrumented library without preloading
  # the ASan runtime.
  if(Python3_Interpreter_FOUND AND NOT KVPAGES_SANITIZE)
    add_test(NAME cuemu.python_binding
             COMMAND ${Python3_EXECUTABLE} -m pytest -q -p no:cacheprovider
                     ${PROJECT_SOURCE_DIR}/bindings/python/tests/test_cuda_emulated.py)
    set_tests_properties(cuemu.python_binding PROPERTIES LABELS "cuemu" TIMEOUT 300
                         ENVIRONMENT "KVPAGES_LIBRARY=$<TARGET_FILE:kvpages_cuemu>"
                         FAIL_REGULAR_EXPRESSION "skipped")
  endif()
endif()
