# dlopen -> use (worker threads busy) -> dlclose, 1,000 times, with flat RSS and thread count
# (issue 17, defect 6). Links only libdl: the library is loaded at run time from its build path.
add_executable(dlopen_cycles ${CMAKE_CURRENT_LIST_DIR}/dlopen_cycles.c)
target_include_directories(dlopen_cycles PRIVATE $<TARGET_PROPERTY:kvpages,INTERFACE_INCLUDE_DIRECTORIES>)
target_link_libraries(dlopen_cycles PRIVATE ${CMAKE_DL_LIBS})
target_compile_options(dlopen_cycles PRIVATE -Wall -Wextra)
add_dependencies(dlopen_cycles kvpages)
add_test(NAME unit.dlopen_cycles COMMAND dlopen_cycles $<TARGET_FILE:kvpages> 1000)
set_tests_properties(unit.dlopen_cycles PROPERTIES LABELS unit TIMEOUT 300 ENVIRONMENT KVP_NUM_THREADS=4)
