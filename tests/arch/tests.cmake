# Layering rules that include paths alone cannot enforce (docs/architecture.md).
add_test(NAME unit.layers COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/check_layers.sh ${PROJECT_SOURCE_DIR})
set_tests_properties(unit.layers PROPERTIES LABELS unit)
