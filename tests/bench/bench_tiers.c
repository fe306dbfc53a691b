/* Storage tiers: offload (write-back of evicted pages to tier 0) and restore (kvp_pool_add_sequence
 * reading them back) of 1 GiB of KV pages through a pool, for a memory store and a directory
 * store, against the physical limit measured in the same run: memcpy of the same bytes (memory)
 * (one call, and split over the library's threads, which the pool's block copies use too)
 * and a sequential write / read of the same bytes to one file in the same directory with the
 * same sync policy (disk). The stores are also timed directly (kvp_store_put / kvp_store_get of
 * blocks of the same size) to separate the pool's share (page copies, block sealing and checks)
 * from the store's; the directory store also with its puts split over two threads while a third
 * times kvp_store_exists (how long a pool's lookup waits on another thread's file write). With
 * --redis, a Redis store too, against its own put / get one block (one round trip) at a time.
 *
 *   bench_tiers [--quick] [--reps N] [--dir DIR] [--sync] [--redis redis://HOST:PORT]
 *
 * Shape: llama3-8b (32 layers, 8 KV heads x 128, bf16), page sizes 16 and 128; 1 GiB of page
 * bytes (--quick: 64 MiB, one repetition by default: the ctest smoke run). Every figure is the
 * best of N repetitions (default 3), each on a new store and pool; each disk phase starts after a
 * sync(2), with no dirty pages left by the phase before. The directory store is in DIR (default
 * the current directory); without --sync it is opened with KVP_STORE_FLAG_NO_SYNC and the
 * baseline file is not fsynced either (both then measure the page cache, not the disk); with
 * --sync every block file is fsynced (and its directory) and the baseline fsyncs after every
 * block-sized write (the same durability), and is also written streamed with one fsync at the
 * end. Under either policy the same bytes are also written to one file through O_DIRECT with one
 * fsync at the end: the disk's own write speed, free of the page cache (the directory target of
 * issue 18 is >= 0.7 of it). The memory store is written inside the evicting call; the directory store
 * by the pool's writer thread (its queue holds one repetition's blocks, so nothing is dropped):
 * offload is the evicting call plus kvp_pool_flush_tiers (the time until the bytes are in the
 * store), and the evicting call alone is shown separately (what the caller waits for). */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench_support.h"
#include "kvpages.h"

static void check(kvp_status s, const char *what) {
  if (s != KVP_OK) {
    fprintf(stderr, "bench_tiers: %s: %s: %s\n", what, kvp_status_name(s), kvp_last_error_message());
    exit(1);
  }
}

static void *xmalloc(size_t n) {
  void *p = aligned_alloc(4096, (n + 4095) / 4096 * 4096); /* aligned: the O_DIRECT baseline writes from it */
  if (p == NULL) {
    fprintf(stderr, "bench_tiers: out of memory (%zu bytes)\n", n);
    exit(1);
  }
  memset(p, 0x5A, n); /* touched: no page faults inside a timing */
  return p;
}

typedef struct run {
  int quick, reps, sync;
  const char *dir;
  const char *redis; /* --redis URL, or NULL */
  uint64_t total;    /* page bytes offloaded and restored */
} run;

/* llama3-8b, page size S, `pages` usable pages. */
static kvp_config make_config(int64_t S, int64_t pages) {
  kvp_config probe;
  kvp_layout_info li;
  check(kvp_config_init(&probe, sizeof probe), "config_init");
  probe.num_hidden_layers = 32;
  probe.num_kv_heads = 8;
  probe.k_headdim = probe.v_headdim = 128;
  probe.max_model_length = (pages + 1) * S;
  probe.page_size = S;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  check(kvp_config_get_layout(&probe, &li), "layout");
  kvp_config_options co;
  check(kvp_config_options_init(&co, sizeof co), "options");
  co.num_hidden_layers = 32;
  co.num_kv_heads = 8;
  co.kv_head_dim_size = 128;
  co.max_model_length = (pages + 1) * S;
  co.page_size = S;
  co.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  co.budget_bytes = (pages + 1) * li.page_bytes_per_layer * 32;
  kvp_config cfg;
  check(kvp_config_create(&co, &cfg), "config_create");
  return cfg;
}

static void remove_files(const char *dir) {
  char path[4096];
  DIR *d = opendir(dir);
  if (d == NULL) return;
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    if (e->d_name[0] != '.') {
      snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
      unlink(path);
    }
  closedir(d);
}

/* A store bounded to about `bytes` of blocks (one repetition's). */
static kvp_store *open_store(const run *r, int directory, const char *path, uint64_t bytes) {
  kvp_store *s = NULL;
  kvp_store_options o = KVP_STORE_OPTIONS_INIT;
  o.flags = r->sync ? 0 : KVP_STORE_FLAG_NO_SYNC;
  if (directory) check(kvp_store_create_directory(path, bytes, &o, &s), "store_create_directory");
  else check(kvp_store_create_memory(bytes, NULL, &s), "store_create_memory");
  return s;
}

/* Seconds of one offload and restore through the pool. */
typedef struct pool_times {
  double evict;   /* the evicting call */
  double offload; /* the evicting call and the flush: every block in the store */
  double restore; /* the restoring call */
} pool_times;

/* One offload and restore of every page of the cache through a new pool with `store` as tier 0:
 * prompt A fills the cache and is released; prompt B evicts all of it (A's pages written to tier
 * 0, flushed); B's pages are dropped; A again restores every page from the tier. Each repetition
 * uses another salt, so its blocks are new keys: from the second on, the store drops the blocks of
 * the one before (a store at its bound, the steady state of a server). */
static pool_times through_pool(kvp_store *store, kvp_cache *cache, int64_t S, int64_t pages, uint64_t queue_bytes,
                               const int32_t *a, const int32_t *b, uint64_t salt) {
  kvp_pool *pool;
  kvp_seq_id s;
  size_t reused = 0, n = (size_t)(pages * S);
  sync(); /* every disk phase starts with no dirty pages of the one before */
  kvp_pool_options po = KVP_POOL_OPTIONS_INIT;
  po.write_queue_bytes = queue_bytes;
  check(kvp_pool_create(cache, &po, &pool), "pool_create");
  check(kvp_pool_add_store(pool, store), "add_store");
  check(kvp_pool_add_sequence(pool, a, n, salt, KVP_POOL_ADD_FLAG_REUSE_ALL, &s, NULL), "add A");
  check(kvp_pool_set_computed(pool, s, n), "set_computed A");
  check(kvp_pool_free_sequence(pool, s), "free A");
  pool_times t;
  const double t0 = bench_now_s();
  check(kvp_pool_add_sequence(pool, b, n, salt, KVP_POOL_ADD_FLAG_REUSE_ALL, &s, NULL), "add B (evicts A)");
  t.evict = bench_now_s() - t0;
  check(kvp_pool_flush_tiers(pool, 0), "flush_tiers");
  t.offload = bench_now_s() - t0;
  check(kvp_pool_free_sequence(pool, s), "free B");
  check(kvp_pool_clear_prefix_cache(pool), "clear");
  const double t2 = bench_now_s();
  check(kvp_pool_add_sequence(pool, a, n, salt, KVP_POOL_ADD_FLAG_REUSE_ALL, &s, &reused), "add A (restores)");
  t.restore = bench_now_s() - t2;
  kvp_pool_tier_stats st = KVP_POOL_TIER_STATS_INIT;
  check(kvp_pool_get_tier_stats(pool, 0, &st), "tier_stats");
  if (reused != n || st.errors != 0 || st.blocks_written != pages) {
    fprintf(stderr, "bench_tiers: restored %zu of %zu tokens, %lld blocks written, %lld errors, %lld dropped\n", reused,
            n, (long long)st.blocks_written, (long long)st.errors, (long long)st.dropped);
    exit(1);
  }
  check(kvp_pool_free_sequence(pool, s), "free A");
  check(kvp_pool_destroy(pool), "pool_destroy");
  return t;
}

static double gbs(uint64_t bytes, double s) { return (double)bytes / s / 1e9; }

/* Keeps the smaller of each time. */
static void best_of(pool_times *best, const pool_times *t) {
  if (t->evict < best->evict) best->evict = t->evict;
  if (t->offload < best->offload) best->offload = t->offload;
  if (t->restore < best->restore) best->restore = t->restore;
}

/* `pages` blocks of `block` bytes put into `store` under distinct keys, one call each, then read
 * back (seconds of each half). */
static void puts_then_gets(kvp_store *store, int64_t pages, size_t block, uint8_t *buf, double *put_s, double *get_s) {
  kvp_store_key k;
  memset(&k, 0, sizeof k);
  double t0 = bench_now_s();
  for (int64_t i = 0; i < pages; ++i) {
    memcpy(k.bytes, &i, sizeof i);
    check(kvp_store_put(store, &k, buf, block), "store_put");
  }
  double t1 = bench_now_s();
  for (int64_t i = 0; i < pages; ++i) {
    size_t size = 0;
    memcpy(k.bytes, &i, sizeof i);
    check(kvp_store_get(store, &k, buf, block, &size), "store_get");
  }
  double t2 = bench_now_s();
  *put_s = t1 - t0;
  *get_s = t2 - t1;
}

/* The store alone: puts_then_gets into a new store. */
static void store_direct(const run *r, int64_t pages, size_t block, uint8_t *buf, int directory, const char *path,
                         double *put_s, double *get_s) {
  kvp_store *store = open_store(r, directory, path, 2 * (uint64_t)pages * block);
  sync();
  puts_then_gets(store, pages, block, buf, put_s, get_s);
  check(kvp_store_destroy(store), "store_destroy");
  if (directory) remove_files(path);
}

/* Removes every block of a store (kvp_store_list, then kvp_store_remove). */
static void empty_store(kvp_store *s) {
  kvp_store_key keys[256];
  for (;;) {
    uint64_t cursor = 0;
    size_t n = 0, total = 0;
    do {
      check(kvp_store_list(s, &cursor, keys, 256, &n), "store_list");
      for (size_t i = 0; i < n; ++i) (void)kvp_store_remove(s, &keys[i]); /* a repeat is NOT_FOUND */
      total += n;
    } while (cursor != 0);
    if (total == 0) return;
  }
}

/* A Redis store (--redis URL, under a key prefix of this process) as tier 0: offload and restore
 * through a pool, best of the repetitions, each on new keys removed afterwards (the server is not
 * bounded here); against the same blocks put and got by the store one call (one round trip) at a
 * time. The pool's restore reads a group of blocks in one pipelined batch. */
static void bench_redis_tier(const run *r, kvp_cache *cache, int64_t S, int64_t pages, size_t block, uint64_t bytes,
                             const int32_t *a, const int32_t *b, uint8_t *buf) {
  char url[1024];
  snprintf(url, sizeof url, "%s?prefix=bench_tiers:%d:", r->redis, (int)getpid());
  kvp_store *store = NULL;
  check(kvp_store_create_redis(url, NULL, &store), "store_create_redis");
  pool_times best = {1e9, 1e9, 1e9};
  double put = 1e9, get = 1e9;
  for (int rep = 0; rep < r->reps; ++rep) {
    const pool_times t = through_pool(store, cache, S, pages, bytes + (uint64_t)pages * 4096, a, b, 1000 + (uint64_t)rep);
    best_of(&best, &t);
    empty_store(store);
    double p1, g1;
    puts_then_gets(store, pages, block, buf, &p1, &g1);
    if (p1 < put) put = p1;
    if (g1 < get) get = g1;
    empty_store(store);
  }
  check(kvp_store_destroy(store), "store_destroy");
  printf("  redis store (%s), through the pool:\n", r->redis);
  printf("    offload %6.2f GB/s (%.2f of kvp_store_put one block at a time: %.2f GB/s)\n", gbs(bytes, best.offload),
         put / best.offload, gbs(bytes, put));
  printf("    restore %6.2f GB/s (%.2f of kvp_store_get one block at a time: %.2f GB/s)\n", gbs(bytes, best.restore),
         get / best.restore, gbs(bytes, get));
}

/* kvp_store_exists of one key, again and again until told to stop, on its own thread: how long a
 * pool's lookup waits while another thread puts blocks into the same store. */
typedef struct prober {
  kvp_store *store;
  volatile int stop;
  double max_s, sum_s;
  long calls, over_1ms; /* calls that took 1 ms or more */
} prober;

static void *probe_main(void *p) {
  prober *pr = (prober *)p;
  kvp_store_key k;
  memset(&k, 0xEE, sizeof k);
  while (!pr->stop) {
    uint8_t found = 0;
    const double t0 = bench_now_s();
    check(kvp_store_exists(pr->store, &k, 1, &found), "store_exists");
    const double dt = bench_now_s() - t0;
    if (dt > pr->max_s) pr->max_s = dt;
    pr->sum_s += dt;
    ++pr->calls;
    if (dt >= 1e-3) ++pr->over_1ms;
  }
  return NULL;
}

typedef struct putter {
  kvp_store *store;
  int64_t first, count;
  size_t block;
  const uint8_t *buf;
} putter;

static void *put_main(void *p) {
  const putter *w = (const putter *)p;
  kvp_store_key k;
  memset(&k, 0, sizeof k);
  for (int64_t i = w->first; i < w->first + w->count; ++i) {
    memcpy(k.bytes, &i, sizeof i);
    check(kvp_store_put(w->store, &k, w->buf, w->block), "store_put");
  }
  return NULL;
}

/* The directory store shared by threads: `pages` puts split over two threads (seconds), and the
 * mean and longest kvp_store_exists (µs) on a third thread meanwhile. */
typedef struct shared_times {
  double put2_s, probe_mean_us, probe_max_us;
  long probes, probes_over_1ms;
} shared_times;

static shared_times store_shared(const run *r, int64_t pages, size_t block, const uint8_t *buf, const char *path) {
  kvp_store *store = open_store(r, 1, path, 2 * (uint64_t)pages * block);
  sync();
  prober pr = {store, 0, 0.0, 0.0, 0, 0};
  putter w[2] = {{store, 0, pages / 2, block, buf}, {store, pages / 2, pages - pages / 2, block, buf}};
  pthread_t tp, tw[2];
  if (pthread_create(&tp, NULL, probe_main, &pr) != 0) exit(1);
  const double t0 = bench_now_s();
  for (int i = 0; i < 2; ++i)
    if (pthread_create(&tw[i], NULL, put_main, &w[i]) != 0) exit(1);
  for (int i = 0; i < 2; ++i) pthread_join(tw[i], NULL);
  const double t1 = bench_now_s();
  pr.stop = 1;
  pthread_join(tp, NULL);
  check(kvp_store_destroy(store), "store_destroy");
  remove_files(path);
  shared_times t = {t1 - t0, pr.calls ? pr.sum_s / (double)pr.calls * 1e6 : 0.0, pr.max_s * 1e6, pr.calls,
                    pr.over_1ms};
  return t;
}

/* Seconds for `pages` writes of `block` bytes to a new file: fsync after each (sync_each), at
 * the end (sync_end), or never; with `direct`, through O_DIRECT (no page cache: what the device
 * itself absorbs; `buf` and `block` aligned to 4096), or -1 where the filesystem refuses it. */
static double write_file(const char *file, int64_t pages, size_t block, const uint8_t *buf, int sync_each, int sync_end,
                         int direct) {
  sync();
  const double t0 = bench_now_s();
  int fd = open(file, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC | (direct ? O_DIRECT : 0), 0644);
  if (fd < 0 && direct) return -1.0;
  if (fd < 0) {
    perror(file);
    exit(1);
  }
  for (int64_t i = 0; i < pages; ++i)
    if (write(fd, buf, block) != (ssize_t)block || (sync_each && fsync(fd) != 0)) {
      perror("write");
      exit(1);
    }
  if (sync_end && fsync(fd) != 0) {
    perror("fsync");
    exit(1);
  }
  close(fd);
  return bench_now_s() - t0;
}

/* Seconds for `pages` new files of `block` bytes each in a new directory under `path`, each
 * written under a temporary name and renamed (the directory store's layout: one file per block,
 * replaced atomically), with an fsync of each file and of the directory after each rename when
 * `sync`. The files are removed afterwards (not timed). */
static double write_files(const char *path, int64_t pages, size_t block, const uint8_t *buf, int sync_each) {
  char dir[4096], tmp[4200], name[4200];
  snprintf(dir, sizeof dir, "%s/files", path);
  if (mkdir(dir, 0777) != 0) {
    perror(dir);
    exit(1);
  }
  sync();
  const double t0 = bench_now_s();
  const int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  for (int64_t i = 0; i < pages; ++i) {
    snprintf(tmp, sizeof tmp, "%s/.tmp%lld", dir, (long long)i);
    snprintf(name, sizeof name, "%s/b%lld", dir, (long long)i);
    const int fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, buf, block) != (ssize_t)block || (sync_each && fsync(fd) != 0) || close(fd) != 0 ||
        rename(tmp, name) != 0 || (sync_each && fsync(dfd) != 0)) {
      perror(tmp);
      exit(1);
    }
  }
  close(dfd);
  const double t = bench_now_s() - t0;
  remove_files(dir);
  rmdir(dir);
  return t;
}

/* The disk's own speed, in seconds for the same bytes: `pages` writes of `block` bytes to one
 * new file (an fsync after each with --sync; with --sync also streamed, one fsync at the end),
 * the same writes through O_DIRECT with one fsync at the end (the device's own write speed,
 * whatever the page cache does; -1 where refused), the same bytes as one file per block
 * (write_files), and reading the one file back. */
typedef struct file_times {
  double write, stream, direct, files, read;
} file_times;

static file_times file_baseline(const run *r, int64_t pages, size_t block, uint8_t *buf, const char *path) {
  char file[4096];
  snprintf(file, sizeof file, "%s/baseline.bin", path);
  file_times t;
  t.stream = r->sync ? write_file(file, pages, block, buf, 0, 1, 0) : 0;
  t.direct = write_file(file, pages, block, buf, 0, 1, 1);
  t.files = write_files(path, pages, block, buf, r->sync);
  t.write = write_file(file, pages, block, buf, r->sync, 0, 0);
  const double t1 = bench_now_s();
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  for (int64_t i = 0; i < pages; ++i)
    if (read(fd, buf, block) != (ssize_t)block) {
      perror("read");
      exit(1);
    }
  close(fd);
  t.read = bench_now_s() - t1;
  unlink(file);
  return t;
}


/* The threads the library's parallel paths use (kvp_build_info's "threads="). */
static int library_threads(void) {
  const char *t = strstr(kvp_build_info(), "threads=");
  const int n = t ? atoi(t + 8) : 1;
  return n > 0 ? n : 1;
}

typedef struct slice {
  char *dst;
  const char *src;
  size_t n;
} slice;

static void *copy_slice(void *p) {
  const slice *s = (const slice *)p;
  memcpy(s->dst, s->src, s->n);
  return NULL;
}

/* Seconds for a memcpy of n bytes split in `threads` slices, one per thread (the caller's
 * included): the memory's bandwidth for the library's thread count. */
static double memcpy_threads(void *dst, const void *src, size_t n, int threads) {
  pthread_t t[64];
  slice s[64];
  if (threads > 64) threads = 64;
  const size_t part = (n / (size_t)threads + 4095) / 4096 * 4096;
  const double t0 = bench_now_s();
  int started = 0;
  for (int i = 0; i < threads; ++i) {
    const size_t lo = (size_t)i * part < n ? (size_t)i * part : n, hi = lo + part < n ? lo + part : n;
    s[i] = (slice){(char *)dst + lo, (const char *)src + lo, hi - lo};
    if (i > 0 && pthread_create(&t[started], NULL, copy_slice, &s[i]) == 0) ++started;
    else if (i > 0) copy_slice(&s[i]);
  }
  copy_slice(&s[0]);
  for (int i = 0; i < started; ++i) pthread_join(t[i], NULL);
  return bench_now_s() - t0;
}

static void bench_page_size(const run *r, int64_t S) {
  kvp_config probe = make_config(S, 1);
  kvp_layout_info li;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  check(kvp_config_get_layout(&probe, &li), "layout");
  const size_t page = (size_t)li.page_bytes_per_layer * 32; /* one page in every layer */
  const int64_t pages = (int64_t)(r->total / page);
  const uint64_t bytes = (uint64_t)pages * page;
  kvp_config cfg = make_config(S, pages);
  kvp_cache *cache;
  check(kvp_cache_create(&cfg, NULL, &cache), "cache_create");
  for (uint32_t l = 0; l < 32; ++l) {
    kvp_tensor t;
    check(kvp_cache_get_view(cache, l, KVP_VIEW_FLAT, &t), "view");
    uint8_t *p = (uint8_t *)t.data;
    for (size_t i = 0; i < (size_t)li.page_bytes_per_layer * (size_t)(pages + 1); ++i) p[i] = (uint8_t)(i * 131 + l);
  }
  const size_t n = (size_t)(pages * S);
  int32_t *a = (int32_t *)xmalloc(sizeof(int32_t) * n), *b = (int32_t *)xmalloc(sizeof(int32_t) * n);
  for (size_t i = 0; i < n; ++i) {
    a[i] = (int32_t)(bench_rand() % 128256u);
    b[i] = (int32_t)(bench_rand() % 128256u);
  }
  uint8_t *src = (uint8_t *)xmalloc(bytes), *dst = (uint8_t *)xmalloc(bytes);
  /* [kind][0]: the first repetition (an empty store); [kind][1]: the best of the others (full) */
  double copy = 1e9;
  const pool_times none = {1e9, 1e9, 1e9};
  pool_times pt[2][2] = {{none, none}, {none, none}};
  double put[2] = {1e9, 1e9}, get[2] = {1e9, 1e9}, fw = 1e9, fws = 1e9, fdirect = 1e9, ff = 1e9, fr = 1e9;
  shared_times shared = {1e9, 0.0, 0.0, 0, 0};
  kvp_store *stores[2];
  char path[4096];
  snprintf(path, sizeof path, "%s/bench_tiers.%d", r->dir, (int)getpid());
  if (mkdir(path, 0777) != 0) {
    perror(path);
    exit(1);
  }
  char store_dir[4096];
  snprintf(store_dir, sizeof store_dir, "%s/store", path);
  /* one repetition's blocks (plus their headers) fit; two do not */
  const uint64_t bound = bytes + (uint64_t)pages * 4096;
  stores[0] = open_store(r, 0, NULL, bound);
  stores[1] = open_store(r, 1, store_dir, bound);
  const int threads = library_threads();
  double copy_mt = 1e9;
  for (int rep = 0; rep < r->reps; ++rep) {
    double t0 = bench_now_s();
    memcpy(dst, src, bytes);
    const double t = bench_now_s() - t0;
    if (t < copy) copy = t;
    const double tm = memcpy_threads(dst, src, bytes, threads);
    if (tm < copy_mt) copy_mt = tm;
    for (int d = 0; d < 2; ++d) {
      double e, s2;
      const pool_times t = through_pool(stores[d], cache, S, pages, bound, a, b, (uint64_t)rep);
      best_of(&pt[d][rep > 0], &t);
      store_direct(r, pages, page, src, d, path, &e, &s2);
      if (e < put[d]) put[d] = e;
      if (s2 < get[d]) get[d] = s2;
    }
    const shared_times st = store_shared(r, pages, page, src, path);
    if (st.put2_s < shared.put2_s) shared = st;
    const file_times ft = file_baseline(r, pages, page, src, path);
    if (ft.write < fw) fw = ft.write;
    if (ft.stream < fws) fws = ft.stream;
    if (ft.direct < fdirect) fdirect = ft.direct; /* -1 (refused) stays */
    if (ft.files < ff) ff = ft.files;
    if (ft.read < fr) fr = ft.read;
  }
  check(kvp_store_destroy(stores[0]), "store_destroy");
  check(kvp_store_destroy(stores[1]), "store_destroy");
  remove_files(store_dir);
  rmdir(store_dir);
  rmdir(path);
  printf("\npage_size %lld: %lld pages of %.2f MiB (32 layers) = %.0f MiB\n", (long long)S, (long long)pages,
         (double)page / 1048576.0, (double)bytes / 1048576.0);
  printf("  memcpy of the same bytes                 : %6.2f GB/s (one call), %.2f GB/s on %d thread%s\n",
         gbs(bytes, copy), gbs(bytes, copy_mt), threads, threads == 1 ? "" : "s");
  for (int d = 0; d < 2; ++d) {
    const double limit_w = d ? fw : copy, limit_r = d ? fr : copy;
    const char *lw = d ? "file write" : "memcpy", *lr = d ? "file read" : "memcpy";
    if (d) printf("  file write / read (%s)         : %6.2f / %6.2f GB/s in %s\n", r->sync ? "fsync per block" : "no fsync",
                  gbs(bytes, fw), gbs(bytes, fr), r->dir);
    if (d && r->sync)
      printf("  file write streamed (one fsync at the end): %6.2f GB/s; directory offload against it: %.2f / %.2f "
             "(empty / steady)\n", gbs(bytes, fws), fws / pt[d][0].offload, r->reps > 1 ? fws / pt[d][1].offload : 0.0);
    if (d && fdirect > 0)
      printf("  the disk's own write speed (O_DIRECT, one fsync at the end): %6.2f GB/s; directory offload against "
             "it: %.2f / %.2f (empty / steady)\n", gbs(bytes, fdirect), fdirect / pt[d][0].offload,
             r->reps > 1 ? fdirect / pt[d][1].offload : 0.0);
    else if (d)
      printf("  the disk's own write speed: not measured (O_DIRECT refused in %s)\n", r->dir);
    if (d)
      printf("  one new file per block (write, rename%s): %6.2f GB/s; directory offload against it: %.2f / %.2f "
             "(empty / steady)\n", r->sync ? ", fsyncs" : "", gbs(bytes, ff), ff / pt[d][0].offload,
             r->reps > 1 ? ff / pt[d][1].offload : 0.0);
    printf("  %s store, through the pool%s:\n", d ? "directory" : "memory",
           d ? "" : " (in parentheses after the ratio to memcpy: the ratio to memcpy on the same threads)");
    for (int full = 0; full < 2 && full < r->reps; ++full) {
      const pool_times *t = &pt[d][full];
      if (d)
        printf("    %-20s offload %6.2f GB/s (%.2f of %s), restore %6.2f GB/s (%.2f of %s)\n",
               full ? "store full (steady)" : "empty store", gbs(bytes, t->offload), limit_w / t->offload, lw,
               gbs(bytes, t->restore), limit_r / t->restore, lr);
      else
        printf("    %-20s offload %6.2f GB/s (%.2f of memcpy (%.2f)), restore %6.2f GB/s (%.2f of memcpy (%.2f))\n",
               full ? "store full (steady)" : "empty store", gbs(bytes, t->offload), copy / t->offload,
               copy_mt / t->offload, gbs(bytes, t->restore), copy / t->restore, copy_mt / t->restore);
      printf("    %-20s (the evicting call alone: %6.2f GB/s, %.2f of the offload time)\n", "", gbs(bytes, t->evict),
             t->evict / t->offload);
    }
    printf("    kvp_store_put / get alone  : %6.2f / %6.2f GB/s (%.2f of %s / %.2f of %s)\n", gbs(bytes, put[d]),
           gbs(bytes, get[d]), limit_w / put[d], lw, limit_r / get[d], lr);
    if (d)
      printf("    kvp_store_put on 2 threads : %6.2f GB/s (%.2f of one thread); kvp_store_exists meanwhile on a "
             "third: mean %.1f us, %ld of %ld calls took >= 1 ms, longest %.0f us\n", gbs(bytes, shared.put2_s),
             put[d] / shared.put2_s, shared.probe_mean_us, shared.probes_over_1ms, shared.probes, shared.probe_max_us);
  }
  if (r->redis != NULL) bench_redis_tier(r, cache, S, pages, page, bytes, a, b, src);
  free(src);
  free(dst);
  free(a);
  free(b);
  check(kvp_cache_destroy(cache), "cache_destroy");
}

int main(int argc, char **argv) {
  run r = {0, 0, 0, ".", NULL, 1ull << 30};
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--quick") == 0) r.quick = 1;
    else if (strcmp(argv[i], "--sync") == 0) r.sync = 1;
    else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) r.reps = atoi(argv[++i]);
    else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) r.dir = argv[++i];
    else if (strcmp(argv[i], "--redis") == 0 && i + 1 < argc) r.redis = argv[++i];
    else {
      fprintf(stderr, "usage: bench_tiers [--quick] [--reps N] [--dir DIR] [--sync] [--redis URL]\n");
      return 2;
    }
  }
  if (r.quick) r.total = 64ull << 20;
  if (r.reps < 1) r.reps = r.quick ? 1 : 3;
  char date[64], cpu[256];
  bench_utc_date(date, sizeof date);
  bench_cpu_model(cpu, sizeof cpu);
  printf("bench_tiers: %s, device CPU (%s), %s, best of %d, llama3-8b (32 layers, 8 KV heads x 128, bf16), "
         "directory store in %s, %s\n",
         kvp_build_info(), cpu, date, r.reps, r.dir, r.sync ? "fsync (default store)" : "KVP_STORE_FLAG_NO_SYNC");
  bench_page_size(&r, 16);
  bench_page_size(&r, 128);
  return 0;
}
