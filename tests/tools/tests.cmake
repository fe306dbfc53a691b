# The kvp command-line tool: exit codes, usage errors and the planning table.
add_test(NAME tools.kvp_cli COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_kvp_cli.sh $<TARGET_FILE:kvp>)
set_tests_properties(tools.kvp_cli PROPERTIES LABELS "tools" TIMEOUT 300)
