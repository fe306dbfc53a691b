# libFuzzer targets, one per parser or state machine (tests/fuzz/fuzz_<name>.c). Needs clang:
# configure with CC=clang CXX=clang++ -DKVPAGES_FUZZ=ON (tests/fuzz/run.sh does this); the
# top-level CMakeLists.txt then compiles the library's layers with coverage and sanitizer
# instrumentation, and every target links their objects, the input reader and the independent
# reference of tests/support (plain C, no cmocka).
set(KVP_FUZZ_TARGETS fuzz_deserialize fuzz_config_json fuzz_metadata_json fuzz_pool fuzz_concatenate)

function(kvp_add_fuzz_target name)
  add_executable(${name} ${CMAKE_CURRENT_LIST_DIR}/${name}.c ${CMAKE_CURRENT_LIST_DIR}/harness.c
                         ${PROJECT_SOURCE_DIR}/tests/support/reference.c)
  foreach(layer ${KVP_HOST_LAYERS} ${KVP_CUDA_LAYER})
    target_sources(${name} PRIVATE $<TARGET_OBJECTS:${layer}>)
  endforeach()
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/include ${KVP_GEN_INCLUDE}
                                             ${CMAKE_CURRENT_LIST_DIR} ${PROJECT_SOURCE_DIR}/tests/support)
  set_target_properties(${name} PROPERTIES LINKER_LANGUAGE CXX)
  target_link_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(${name} PRIVATE ${KVP_LIBRARY_DEPS} m)
endfunction()

if(KVPAGES_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang" OR NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "KVPAGES_FUZZ=ON needs clang: configure with CC=clang CXX=clang++")
  endif()
  if(KVP_HAS_CUDA)
    message(FATAL_ERROR "KVPAGES_FUZZ=ON needs -DKVPAGES_CUDA=OFF")
  endif()
  foreach(t ${KVP_FUZZ_TARGETS})
    kvp_add_fuzz_target(${t})
  endforeach()
  add_custom_target(fuzz_targets DEPENDS ${KVP_FUZZ_TARGETS})
endif()
