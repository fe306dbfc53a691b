# libFuzzer target for the deserializer. Needs clang: configure with CC=clang CXX=clang++
# -DKVPAGES_FUZZ=ON (tests/fuzz/run.sh does this); the top-level CMakeLists.txt then compiles the
# library's layers with coverage and sanitizer instrumentation, and the target links their objects.
if(KVPAGES_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang" OR NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "KVPAGES_FUZZ=ON needs clang: configure with CC=clang CXX=clang++")
  endif()
  if(KVP_HAS_CUDA)
    message(FATAL_ERROR "KVPAGES_FUZZ=ON needs -DKVPAGES_CUDA=OFF")
  endif()
  add_executable(fuzz_deserialize ${CMAKE_CURRENT_LIST_DIR}/fuzz_deserialize.c)
  foreach(layer ${KVP_HOST_LAYERS} ${KVP_CUDA_LAYER})
    target_sources(fuzz_deserialize PRIVATE $<TARGET_OBJECTS:${layer}>)
  endforeach()
  target_include_directories(fuzz_deserialize PRIVATE ${PROJECT_SOURCE_DIR}/include ${KVP_GEN_INCLUDE})
  set_target_properties(fuzz_deserialize PROPERTIES LINKER_LANGUAGE CXX)
  target_link_options(fuzz_deserialize PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz_deserialize PRIVATE Threads::Threads PkgConfig::XXHASH)
endif()
