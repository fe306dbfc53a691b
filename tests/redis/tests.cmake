# The Redis store's tests against real servers: scripts/with-redis.sh starts a server and a
# three-master cluster on loopback ports for the test program and stops them after; it exits 77
# (skipped) when redis-server is not installed. A build without Redis registers a skipped test.
if(KVP_HAS_REDIS)
  add_executable(test_store_redis ${CMAKE_CURRENT_LIST_DIR}/test_store_redis.c)
  target_link_libraries(test_store_redis PRIVATE kvp_test_support PkgConfig::HIREDIS Threads::Threads)
  target_compile_options(test_store_redis PRIVATE -Wall -Wextra -Wno-unused-parameter)
  add_test(NAME redis.test_store_redis
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/../../scripts/with-redis.sh $<TARGET_FILE:test_store_redis>)
else()
  add_test(NAME redis.test_store_redis
           COMMAND sh -c "echo 'SKIP: built without Redis (KVPAGES_REDIS=OFF or no hiredis)'; exit 77")
endif()
set_tests_properties(redis.test_store_redis PROPERTIES LABELS redis TIMEOUT 300 SKIP_RETURN_CODE 77)
