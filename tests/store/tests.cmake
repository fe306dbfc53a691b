# A directory store on a full disk: full_disk.sh mounts a 256 KiB tmpfs in a private mount
# namespace and runs test_full_disk there; it skips (exit 77) where no such mount is possible.
add_executable(test_full_disk ${CMAKE_CURRENT_LIST_DIR}/test_full_disk.c)
target_link_libraries(test_full_disk PRIVATE kvp_test_support Threads::Threads)
target_compile_options(test_full_disk PRIVATE -Wall -Wextra -Wno-unused-parameter)
add_test(NAME unit.test_full_disk COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/full_disk.sh $<TARGET_FILE:test_full_disk>)
set_tests_properties(unit.test_full_disk PROPERTIES LABELS unit TIMEOUT 300 SKIP_RETURN_CODE 77)
