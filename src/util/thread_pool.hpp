// The library's one CPU runtime: a process-wide work-sharing thread pool over POSIX threads, used
// by every parallel CPU path (concatenate, serialization, attention, the pool's block copies).
//
// The caller publishes a job of `n` chunks, wakes up to `helpers` pool threads and works on the
// chunks itself; chunks are claimed from an atomic counter. The caller returns as soon as every
// chunk is done and never waits for a helper that has not started yet (a helper that wakes late
// finds the job gone), so a helper the OS does not schedule costs nothing. One job runs at a time;
// a second caller meanwhile runs its chunks on its own thread, and so does a job started from
// inside a chunk (no nesting). Threads: KVP_NUM_THREADS from the environment (read once), else
// the number of CPUs.
//
// Waking a sleeping thread costs tens of microseconds (a futex wake, and on a VM an interrupt to an
// idle virtual CPU), as much as the work of a mid-sized job. So a helper that finishes a job keeps
// watching for the next one for a short while (KVP_SPIN_US, default 100 µs; 0: never) before it
// sleeps, as OpenMP runtimes do: the per-layer calls of a step find their helpers awake.
//
// What the runtime survives (util/lifecycle.cpp drives the last two):
//  - thread creation failing: helpers are created on the first parallel job; when the OS refuses
//    one, the pool keeps the ones it has (possibly none) and never retries, and every job still
//    completes, the caller doing the chunks no helper takes;
//  - fork(): the child has none of the helpers, and the pool's locks may have been held by threads
//    that do not exist there; after_fork_in_child() re-creates the pool's state in place (nothing
//    is destroyed: the old condition variable has waiters that are gone) and the child's first
//    parallel job starts helpers of its own;
//  - unloading (dlclose, or process exit): shutdown() waits for a job in flight, stops and joins
//    every helper, so no thread runs the library's code once it is unmapped; jobs after it run on
//    the caller's thread alone.
#pragma once

#include <pthread.h>

#include <atomic>
#include <condition_variable>
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
  // Whether a helper is watching for the next job now (for KVP_SPIN_US after its last one): a job
  // posted now starts without a wake-up, so smaller jobs are worth splitting.
  bool helpers_awake() const noexcept;
  // Runs fn(arg, i) for every i in [0, n); returns when all are done.
  void run(int64_t n, int helpers, ChunkFn fn, void* arg);

  // Process lifecycle hooks (util/lifecycle.cpp); no-ops when the pool was never made.
  static void after_fork_in_child() noexcept;
  static void shutdown() noexcept;

 private:
  struct Job;
  // What the helpers share with the job's caller; guarded by mu unless atomic.
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    Job* job = nullptr;
    uint64_t gen = 0;
    std::atomic<uint64_t> posted{0};  // gen, readable without mu by a helper watching for a job
    int wanted = 0;
    bool stop = false;
    std::atomic<int> inside{0};
  };
  static constexpr int kMaxThreads = 256;

  ThreadPool();
  int start_helpers();  // run_mu_ held; returns the helpers running
  void stop_helpers();  // run_mu_ held
  static void* helper_main(void* self) noexcept;
  void loop();
  void watch_for_job(uint64_t seen) noexcept;
  static void work(Job& j);

  int threads_total_ = 1;
  int64_t spin_ns_ = 0;  // how long a helper watches for the next job before sleeping
  std::atomic<int64_t> watching_until_ns_{0};  // steady clock: when the last helper to watch stops
  std::mutex run_mu_;  // one job at a time; concurrent callers run inline
  // Guarded by run_mu_:
  bool started_ = false;  // helper creation was tried (it is never retried)
  bool closed_ = false;   // shut down: no helper is started again
  int num_helpers_ = 0;
  pthread_t helpers_[kMaxThreads];
  Shared s_;
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

// Runs f(i) for every i in [0, n), items of about `bytes_each` bytes of memory traffic each: on
// up to all of the pool's threads (one item per chunk) when there is enough work to pay for
// waking them (1 MiB in all), else on the caller's thread alone. f as for parallel_for.
template <class F>
void parallel_for_bytes(size_t n, size_t bytes_each, F&& f) {
  const bool worth = n > 1 && bytes_each > 0 && n >= (size_t{1} << 20) / bytes_each;
  const int threads = worth ? static_cast<int>(n < static_cast<size_t>(ThreadPool::instance().max_threads())
                                                   ? n
                                                   : static_cast<size_t>(ThreadPool::instance().max_threads()))
                            : 1;
  parallel_for(static_cast<int64_t>(n), threads, [&f](int64_t i) { f(static_cast<size_t>(i)); });
}

}  // namespace kvp::detail
