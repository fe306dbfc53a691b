# The kvp command-line tool: exit codes, usage errors, --help, --opt=value, the planning table (flags,
# --hf configs, --tp), --json output, save/load/inspect and their progress bars, bench --shape,
# store ls/stat/scrub over a directory store fill_store filled.
add_executable(fill_store ${CMAKE_CURRENT_LIST_DIR}/fill_store.c)
target_link_libraries(fill_store PRIVATE kvp_test_support)
add_test(NAME tools.kvp_cli COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_kvp_cli.sh $<TARGET_FILE:kvp>
         $<TARGET_FILE:fill_store>)
set_tests_properties(tools.kvp_cli PROPERTIES LABELS "tools" TIMEOUT 600)
