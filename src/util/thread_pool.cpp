#include "util/thread_pool.hpp"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <new>
#include <thread>

namespace kvp::detail {

struct ThreadPool::Job {
  ChunkFn fn = nullptr;
  void* arg = nullptr;
  int64_t n = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

namespace {

constexpr long kDefaultSpinUs = 100;  // KVP_SPIN_US when unset
constexpr long kMaxSpinUs = 100000;   // 0.1 s: a larger KVP_SPIN_US is clamped to it

// Tells the CPU this is a spin-wait loop (fewer wasted cycles, and a hyper-thread sibling runs).
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// The pool lives in the library's own static storage and is never destroyed: a thread of the
// process may still call in while static destructors run at exit. Unloading the library releases
// the storage; shutdown() has joined the helpers by then.
alignas(ThreadPool) unsigned char g_storage[sizeof(ThreadPool)];
std::atomic<ThreadPool*> g_pool{nullptr};

int64_t steady_ns(std::chrono::steady_clock::time_point t) noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

}  // namespace

ThreadPool& ThreadPool::instance() {
  static ThreadPool* pool = [] {
    auto* p = new (g_storage) ThreadPool();
    g_pool.store(p, std::memory_order_release);
    return p;
  }();
  return *pool;
}

ThreadPool::ThreadPool() {
  const char* env = std::getenv("KVP_NUM_THREADS");
  long n = env != nullptr && *env != 0 ? std::strtol(env, nullptr, 10) : 0;
  if (n <= 0) n = static_cast<long>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  threads_total_ = static_cast<int>(std::min<long>(n, kMaxThreads));
  const char* spin = std::getenv("KVP_SPIN_US");
  const long us = spin != nullptr && *spin != 0 ? std::strtol(spin, nullptr, 10) : kDefaultSpinUs;
  spin_ns_ = std::clamp<long>(us, 0, kMaxSpinUs) * 1000;
}

namespace {
// True on a thread while it runs a chunk of a pool job: a job started from inside a chunk (a
// group's shard writing its own batch) runs on that thread alone instead of nesting.
thread_local bool t_in_chunk = false;
}  // namespace

void ThreadPool::work(Job& j) {
  const bool outer = t_in_chunk;
  t_in_chunk = true;
  for (;;) {
    const int64_t i = j.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= j.n) break;
    j.fn(j.arg, i);
    j.done.fetch_add(1, std::memory_order_release);
  }
  t_in_chunk = outer;
}

void ThreadPool::run(int64_t n, int helpers, ChunkFn fn, void* arg) {
  std::unique_lock<std::mutex> run_lock(run_mu_, std::defer_lock);
  if (helpers > 0 && n > 1 && !t_in_chunk && run_lock.try_lock()) helpers = std::min(helpers, start_helpers());
  if (helpers <= 0 || n <= 1 || !run_lock.owns_lock()) {  // no helpers, or busy with another caller
    for (int64_t i = 0; i < n; ++i) fn(arg, i);
    return;
  }
  Job job;
  job.fn = fn;
  job.arg = arg;
  job.n = n;
  {
    std::lock_guard<std::mutex> lk(s_.mu);
    s_.job = &job;
    s_.wanted = helpers;
    s_.posted.store(++s_.gen, std::memory_order_release);
  }
  s_.cv.notify_all();
  work(job);
  for (int spins = 0; job.done.load(std::memory_order_acquire) < n; ++spins)
    if (spins > 64) std::this_thread::yield();
  {
    std::lock_guard<std::mutex> lk(s_.mu);
    s_.job = nullptr;
    s_.wanted = 0;
  }
  // Helpers that joined this job may still be failing to claim a chunk; wait for them to leave.
  while (s_.inside.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

int ThreadPool::start_helpers() {
  if (started_ || closed_) return num_helpers_;
  started_ = true;
  // Helpers take no signals: the process's handlers run on its own threads only.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  for (int t = 1; t < threads_total_; ++t) {
    if (pthread_create(&helpers_[num_helpers_], nullptr, &ThreadPool::helper_main, this) != 0)
      break;  // fewer helpers; the caller does the chunks no helper takes
    ++num_helpers_;
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return num_helpers_;
}

void* ThreadPool::helper_main(void* self) noexcept {
  static_cast<ThreadPool*>(self)->loop();
  return nullptr;
}

// Returns once a job newer than `seen` is posted, or after spin_ns_ (the caller then sleeps on the
// condition variable, which stop_helpers() also wakes).
void ThreadPool::watch_for_job(uint64_t seen) noexcept {
  if (spin_ns_ <= 0) return;
  const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(spin_ns_);
  watching_until_ns_.store(steady_ns(until), std::memory_order_relaxed);
  for (unsigned i = 1;; ++i) {
    if (s_.posted.load(std::memory_order_acquire) != seen) return;
    cpu_relax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() >= until) return;
  }
}

bool ThreadPool::helpers_awake() const noexcept {
  return steady_ns(std::chrono::steady_clock::now()) < watching_until_ns_.load(std::memory_order_relaxed);
}

void ThreadPool::loop() {
  uint64_t seen = 0;
  for (;;) {
    watch_for_job(seen);
    Job* j;
    {
      std::unique_lock<std::mutex> lk(s_.mu);
      s_.cv.wait(lk, [&] { return s_.stop || s_.gen != seen; });
      if (s_.stop) return;
      seen = s_.gen;
      if (s_.job == nullptr || s_.wanted <= 0) continue;  // over, or helped enough: watch for the next
      --s_.wanted;
      j = s_.job;
      s_.inside.fetch_add(1, std::memory_order_relaxed);
    }
    work(*j);
    s_.inside.fetch_sub(1, std::memory_order_release);
  }
}

void ThreadPool::stop_helpers() {
  {
    std::lock_guard<std::mutex> lk(s_.mu);
    s_.stop = true;
  }
  s_.cv.notify_all();
  for (int t = 0; t < num_helpers_; ++t) pthread_join(helpers_[t], nullptr);
  num_helpers_ = 0;
}

void ThreadPool::shutdown() noexcept {
  ThreadPool* p = g_pool.load(std::memory_order_acquire);
  if (p == nullptr) return;
  // A job in flight on another thread ends on its own; wait for it, but not forever (an exit()
  // from inside a job's thread, say from a signal handler): then the helpers are left running.
  std::unique_lock<std::mutex> run_lock(p->run_mu_, std::defer_lock);
  for (int waited_ms = 0; !run_lock.try_lock(); ++waited_ms) {
    if (waited_ms >= 2000) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  p->closed_ = true;
  p->stop_helpers();
}

void ThreadPool::after_fork_in_child() noexcept {
  ThreadPool* p = g_pool.load(std::memory_order_acquire);
  if (p == nullptr) return;
  // Only this thread exists: the helpers, and any thread that held a lock, are gone. Re-create the
  // locks and the shared state over the old ones without destroying them, and forget the helpers.
  new (&p->run_mu_) std::mutex();
  new (&p->s_) Shared();
  p->started_ = false;
  p->num_helpers_ = 0;
  p->watching_until_ns_.store(0, std::memory_order_relaxed);
}

}  // namespace kvp::detail
