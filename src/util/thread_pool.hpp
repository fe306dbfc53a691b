// The library's one CPU runtime: a process-wide work-sharing thread pool over std::thread, used by
// every parallel CPU path (concatenate, serialization, attention).
//
// The caller publishes a job of `n` chunks, wakes up to `helpers` pool threads and works on the
// chunks itself; chunks are claimed from an atomic counter. The caller returns as soon as every
// chunk is done and never waits for a helper that has not started yet (a helper that wakes late
// finds the job gone), so a helper the OS does not schedule costs nothing. One job runs at a time;
// a second caller meanwhile runs its chunks on its own thread. Threads: KVP_NUM_THREADS from the
// environment (read once), else the number of CPUs; created on first use (fewer when creation
// fails) and kept for the life of the process.
#pragma once

#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>

namespace kvp::detail {

class ThreadPool {
 public:
  using ChunkFn = void (*)(void* arg, int64_t chunk);  // must not throw

  static ThreadPool& instance();
  // Threads a job may use, the caller included (>= 1).
  int max_threads() const noexcept { return threads_total_; }
  // Runs fn(arg, i) for every i in [0, n); returns when all are done.
  void run(int64_t n, int helpers, ChunkFn fn, void* arg);

 private:
  struct Job;
  ThreadPool();
  void start_threads();
  void loop();
  static void work(Job& j);

  int threads_total_ = 1;
  bool started_ = false;  // guarded by run_mu_
  std::mutex run_mu_;     // one job at a time; concurrent callers run inline
  struct Shared;
  Shared* s_;
};

// Runs f(i) for every i in [0, n) on up to `threads` threads (the caller included). f may throw:
// the exception of the lowest failing i is rethrown once every chunk has run.
template <class F>
void parallel_for(int64_t n, int threads, F&& f) {
  struct Ctx {
    F* f;
    std::mutex mu;
    std::exception_ptr err;
    int64_t err_i = std::numeric_limits<int64_t>::max();
  } ctx{&f, {}, {}};
  ThreadPool::instance().run(n, threads - 1, [](void* arg, int64_t i) {
    Ctx& c = *static_cast<Ctx*>(arg);
    try {
      (*c.f)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(c.mu);
      if (i < c.err_i) {
        c.err_i = i;
        c.err = std::current_exception();
      }
    }
  }, &ctx);
  if (ctx.err) std::rethrow_exception(ctx.err);
}

}  // namespace kvp::detail
