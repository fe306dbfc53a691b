#include "util/thread_pool.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <thread>

namespace kvp::detail {

struct ThreadPool::Job {
  ChunkFn fn = nullptr;
  void* arg = nullptr;
  int64_t n = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

struct ThreadPool::Shared {
  std::mutex mu;
  std::condition_variable cv;
  Job* job = nullptr;  // guarded by mu
  uint64_t gen = 0;    // guarded by mu
  int wanted = 0;      // guarded by mu
  std::atomic<int> inside{0};
};

ThreadPool& ThreadPool::instance() {
  static ThreadPool* pool = new ThreadPool();  // never destroyed: threads may outlive static dtors
  return *pool;
}

ThreadPool::ThreadPool() : s_(new Shared()) {
  const char* env = std::getenv("KVP_NUM_THREADS");
  long n = env != nullptr && *env != 0 ? std::strtol(env, nullptr, 10) : 0;
  if (n <= 0) n = static_cast<long>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  threads_total_ = static_cast<int>(std::min<long>(n, 256));
}

void ThreadPool::work(Job& j) {
  for (;;) {
    const int64_t i = j.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= j.n) return;
    j.fn(j.arg, i);
    j.done.fetch_add(1, std::memory_order_release);
  }
}

void ThreadPool::run(int64_t n, int helpers, ChunkFn fn, void* arg) {
  if (helpers > threads_total_ - 1) helpers = threads_total_ - 1;
  std::unique_lock<std::mutex> run_lock(run_mu_, std::try_to_lock);
  if (helpers <= 0 || n <= 1 || !run_lock.owns_lock()) {  // busy with another caller: run inline
    for (int64_t i = 0; i < n; ++i) fn(arg, i);
    return;
  }
  start_threads();
  Job job;
  job.fn = fn;
  job.arg = arg;
  job.n = n;
  {
    std::lock_guard<std::mutex> lk(s_->mu);
    s_->job = &job;
    s_->wanted = helpers;
    ++s_->gen;
  }
  s_->cv.notify_all();
  work(job);
  for (int spins = 0; job.done.load(std::memory_order_acquire) < n; ++spins)
    if (spins > 64) std::this_thread::yield();
  {
    std::lock_guard<std::mutex> lk(s_->mu);
    s_->job = nullptr;
    s_->wanted = 0;
  }
  // Helpers that joined this job may still be failing to claim a chunk; wait for them to leave.
  while (s_->inside.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

void ThreadPool::start_threads() {
  if (started_) return;
  started_ = true;
  for (int t = 1; t < threads_total_; ++t) {
    try {
      std::thread(&ThreadPool::loop, this).detach();
    } catch (...) {
      break;  // fewer helpers; the caller still does all remaining work itself
    }
  }
}

void ThreadPool::loop() {
  uint64_t seen = 0;
  for (;;) {
    Job* j;
    {
      std::unique_lock<std::mutex> lk(s_->mu);
      s_->cv.wait(lk, [&] { return s_->job != nullptr && s_->gen != seen && s_->wanted > 0; });
      seen = s_->gen;
      --s_->wanted;
      j = s_->job;
      s_->inside.fetch_add(1, std::memory_order_relaxed);
    }
    work(*j);
    s_->inside.fetch_sub(1, std::memory_order_release);
  }
}

}  // namespace kvp::detail
