# The kvp command-line tool: exit codes, usage errors, --help, --opt=value, the planning table (flags,
# --hf configs, --tp), --json output, save/load/inspect and their progress bars, bench --shape.
add_test(NAME tools.kvp_cli COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_kvp_cli.sh $<TARGET_FILE:kvp>)
set_tests_properties(tools.kvp_cli PROPERTIES LABELS "tools" TIMEOUT 600)
