# The LD_PRELOAD allocation-failure sweep: fail_malloc.c makes malloc and friends (and so operator
# new) fail on demand; test_oom_shim.c runs each scenario with allocation N failing, N = 0, 1, ...
# Only without sanitizers: ASan's runtime owns malloc and would not let the shim interpose. (The
# ASan stage runs test_oom, the library's allocator-hook sweep, under LeakSanitizer instead.)
if(NOT KVPAGES_SANITIZE AND NOT KVPAGES_FUZZ)
  add_library(kvp_oom_shim SHARED ${CMAKE_CURRENT_LIST_DIR}/fail_malloc.c)
  set_target_properties(kvp_oom_shim PROPERTIES C_VISIBILITY_PRESET default)
  add_executable(test_oom_shim ${CMAKE_CURRENT_LIST_DIR}/test_oom_shim.c)
  target_link_libraries(test_oom_shim PRIVATE kvp_test_support Threads::Threads ${CMAKE_DL_LIBS})
  target_compile_options(test_oom_shim PRIVATE -Wall -Wextra -Wno-unused-parameter)
  add_dependencies(test_oom_shim kvp_oom_shim)
  add_test(NAME unit.test_oom_shim COMMAND test_oom_shim)
  add_test(NAME unit.test_oom_shim.cold COMMAND test_oom_shim "*cold*")
  set_tests_properties(unit.test_oom_shim unit.test_oom_shim.cold PROPERTIES LABELS unit TIMEOUT 600
    ENVIRONMENT "LD_PRELOAD=$<TARGET_FILE:kvp_oom_shim>")
  # Unit tests with malloc-failure cases of their own (tests/support/fail_malloc.h); elsewhere those
  # cases skip.
  foreach(t test_json test_config)
    add_dependencies(${t} kvp_oom_shim)
    set_tests_properties(unit.${t} PROPERTIES ENVIRONMENT "LD_PRELOAD=$<TARGET_FILE:kvp_oom_shim>")
  endforeach()
endif()
