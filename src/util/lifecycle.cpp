// The library's process lifecycle, in one place (docs/mainpage.md "Fork and dlclose"):
//  - fork(): the locks of process-wide state are held across the fork so the child never inherits
//    one locked by a thread it does not have; in the child the thread pool forgets its helpers
//    (the child's first parallel job starts its own).
//  - unload (dlclose, or exit): the thread pool's helpers are stopped and joined, so no thread runs
//    the library's code after it is unmapped, the handle table is unmapped when no handle is
//    live, and so is the kept mapping of the last cache released. A later dlopen starts from fresh
//    static state.
// glibc removes the fork handlers of a library when it is unloaded.
#include <pthread.h>

#include "util/handle.hpp"
#include "util/kept_mapping.hpp"
#include "util/memory.hpp"
#include "util/thread_pool.hpp"

namespace kvp::detail {
namespace {

void prepare_fork() {
  host_allocator_prepare_fork();
  handle_table_prepare_fork();
  kept_mapping_prepare_fork();
}

void after_fork_in_parent() {
  kept_mapping_after_fork();
  handle_table_after_fork();
  host_allocator_after_fork();
}

void after_fork_in_child() {
  kept_mapping_after_fork();
  handle_table_after_fork();
  host_allocator_after_fork();
  ThreadPool::after_fork_in_child();
}

__attribute__((constructor)) void on_load() { pthread_atfork(prepare_fork, after_fork_in_parent, after_fork_in_child); }

__attribute__((destructor)) void on_unload() {
  ThreadPool::shutdown();
  handle_table_release();
  kept_mapping_release();
}

}  // namespace
}  // namespace kvp::detail
