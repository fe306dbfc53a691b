# Golden serialized blobs (tests/data/v1.0) and their generator; wiring for test_serialize.
if(TARGET test_serialize)
  target_compile_definitions(test_serialize PRIVATE KVP_TEST_DATA_DIR="${CMAKE_CURRENT_LIST_DIR}")
  # The test recomputes the format's XXH3 checksums independently of the library.
  target_link_libraries(test_serialize PRIVATE PkgConfig::XXHASH)
endif()

# The golden sequence blob (tests/data/sequence-v1) for test_pool_sequence.
if(TARGET test_pool_sequence)
  target_compile_definitions(test_pool_sequence PRIVATE KVP_TEST_DATA_DIR="${CMAKE_CURRENT_LIST_DIR}")
endif()

# Generator of the golden blobs (not run by the tests; see tests/data/README.md).
add_executable(kvp_gen_golden ${CMAKE_CURRENT_LIST_DIR}/gen_golden.c)
target_link_libraries(kvp_gen_golden PRIVATE kvpages)

# `kvp inspect` must accept the golden blobs and reject a damaged copy.
if(TARGET kvp)
  add_test(NAME unit.kvp_inspect_golden
           COMMAND kvp inspect ${CMAKE_CURRENT_LIST_DIR}/v1.0/whole-v3-h64-bf16.kvps)
  add_test(NAME unit.kvp_inspect_rejects_damage
           COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/inspect_corrupt.sh $<TARGET_FILE:kvp>
                   ${CMAKE_CURRENT_LIST_DIR}/v1.0/whole-v3-h64-bf16.kvps ${CMAKE_CURRENT_BINARY_DIR}/inspect_corrupt)
  set_tests_properties(unit.kvp_inspect_golden unit.kvp_inspect_rejects_damage PROPERTIES LABELS unit)
endif()

# bench_serialize also times XXH3 alone when it can link xxHash.
if(TARGET bench_serialize)
  target_link_libraries(bench_serialize PRIVATE PkgConfig::XXHASH)
  target_compile_definitions(bench_serialize PRIVATE KVP_BENCH_HAVE_XXHASH=1)
endif()
