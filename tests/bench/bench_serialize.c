/* Serialization throughput to and from memory, checksums on, as GB/s and as a ratio to memcpy of
 * the same bytes measured in the same run (best of several repetitions each).
 *
 *   bench_serialize [--mib N] [--reps N] [--cuda] [--dir DIR]
 *
 * Cases: the whole cache and a fragmented half (every other page). serialize = cache -> caller
 * buffer; deserialize_into = buffer -> existing cache (verifies every checksum before writing,
 * so it reads the input twice); deserialize_new = buffer -> new cache (single pass, includes the
 * allocation). With --cuda the cache lives on GPU 0 (GPU -> host and host -> GPU), and the limit
 * is a copy of the same bytes between device memory and pinned host memory (cudaMemcpy, in the
 * direction of the operation), measured in the same run: the blob must cross the bus once, and
 * the bus is slower than host memcpy.
 *
 * Files (host caches; in DIR, default the current directory, so on its filesystem): save =
 * kvp_serialize_to_file (atomic: temporary file, fsync, rename, directory fsync) against
 * write(2) of the same bytes to a new file plus its fsync and rename; load_new / load_into =
 * kvp_deserialize_new_from_file / kvp_deserialize_into_from_file against read(2) of the file into
 * mapped memory (the file is in the page cache: these measure the CPU side, not the disk). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "bench_support.h"
#include "kvpages.h"

#if KVP_HAS_CUDA
#include <cuda_runtime_api.h>
#define CK(expr)                                                                                  \
  do {                                                                                            \
    cudaError_t e_ = (expr);                                                                      \
    if (e_ != cudaSuccess) {                                                                      \
      fprintf(stderr, "bench_serialize: %s: %s\n", #expr, cudaGetErrorString(e_));                \
      exit(1);                                                                                    \
    }                                                                                             \
  } while (0)
#endif

#if defined(KVP_BENCH_HAVE_XXHASH)
#include <xxhash.h>
#if defined(__x86_64__) && defined(__has_include)
#if __has_include(<xxh_x86dispatch.h>)
#include <xxh_x86dispatch.h> /* the same (AVX2/AVX-512) XXH3 the library uses */
#endif
#endif
#endif

static void check(kvp_status s, const char *what) {
  if (s != KVP_OK) {
    fprintf(stderr, "bench_serialize: %s: %s: %s\n", what, kvp_status_name(s), kvp_last_error_message());
    exit(1);
  }
}

static volatile uint8_t g_sink;

/* A fresh anonymous mapping of n bytes, 2 MiB-aligned and advised MADV_HUGEPAGE: the memory a
 * peer that asks for huge pages gets (numpy's allocator does this for arrays of 4 MiB or more). */
#define HUGE_2M ((size_t)2 << 20)
static uint8_t *map_huge(size_t n) {
  uint8_t *raw = mmap(NULL, n + HUGE_2M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  uint8_t *p = (uint8_t *)(((uintptr_t)raw + HUGE_2M - 1) & ~(uintptr_t)(HUGE_2M - 1));
  uint8_t *end = p + ((n + 4095) & ~(size_t)4095);
  if (p > raw) munmap(raw, (size_t)(p - raw)); /* trim head and tail: exactly [p, p + n) stays */
  if (raw + n + HUGE_2M > end) munmap(end, (size_t)(raw + n + HUGE_2M - end));
  madvise(p, n, MADV_HUGEPAGE);
  return p;
}
static void unmap_huge(uint8_t *p, size_t n) { munmap(p, n); }

/* The limit of an atomic save: write(2) n bytes to a new file, fsync it, rename it over `path`. */
static void write_file_fsync(const char *dir, const char *path, const uint8_t *p, size_t n) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s/bench_serialize.raw.tmp", dir);
  int fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  size_t done = 0;
  while (fd >= 0 && done < n) {
    ssize_t w = write(fd, p + done, n - done);
    if (w <= 0) break;
    done += (size_t)w;
  }
  if (fd < 0 || done != n || fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
    perror("bench_serialize: raw write");
    exit(1);
  }
}

/* The limit of a load: read(2) the whole file into `dst`. */
static void read_file_into(const char *path, uint8_t *dst, size_t n) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  size_t done = 0;
  while (fd >= 0 && done < n) {
    ssize_t r = read(fd, dst + done, n - done);
    if (r <= 0) break;
    done += (size_t)r;
  }
  if (fd < 0 || done != n) {
    perror("bench_serialize: raw read");
    exit(1);
  }
  close(fd);
}

/* Save and load through a file in `dir`, interleaved with the raw write+fsync / read baselines.
 * `blob` holds the blob of (cache, so) (n bytes); the loads are checked against it. */
static void bench_files(kvp_cache *cache, const kvp_serialize_options *so, const char *dir, const char *name,
                        const uint8_t *blob, size_t n, int reps) {
  char path[4200], raw[4200];
  snprintf(path, sizeof path, "%s/bench_serialize.kvps", dir);
  snprintf(raw, sizeof raw, "%s/bench_serialize.raw", dir);
  uint8_t *dst = map_huge(n);
  memset(dst, 5, n);
  double t_save = 1e30, t_write = 1e30, t_new = 1e30, t_into = 1e30, t_read = 1e30, t_read_fresh = 1e30;
  for (int r = 0; r < reps; ++r) {
    double t0 = bench_now_s();
    write_file_fsync(dir, raw, blob, n);
    double t = bench_now_s() - t0;
    if (t < t_write) t_write = t;

    t0 = bench_now_s();
    check(kvp_serialize_to_file(cache, so, path), "serialize_to_file");
    t = bench_now_s() - t0;
    if (t < t_save) t_save = t;
    if (r == 0) { /* the file holds the blob */
      read_file_into(path, dst, n);
      if (memcmp(dst, blob, n) != 0) {
        fprintf(stderr, "bench_serialize: the file differs from the blob\n");
        exit(1);
      }
    }

    t0 = bench_now_s();
    read_file_into(raw, dst, n);
    t = bench_now_s() - t0;
    if (t < t_read) t_read = t;

    t0 = bench_now_s();
    uint8_t *fresh = map_huge(n);
    read_file_into(raw, fresh, n);
    g_sink ^= fresh[n / 3];
    unmap_huge(fresh, n);
    t = bench_now_s() - t0;
    if (t < t_read_fresh) t_read_fresh = t;

    kvp_cache *c2 = NULL;
    t0 = bench_now_s();
    check(kvp_deserialize_new_from_file(path, NULL, &c2), "deserialize_new_from_file");
    t = bench_now_s() - t0;
    if (t < t_new) t_new = t;

    t0 = bench_now_s();
    check(kvp_deserialize_into_from_file(cache, path, so->page_ids, so->num_page_ids), "deserialize_into_from_file");
    t = bench_now_s() - t0;
    if (t < t_into) t_into = t;
    if (r == 0) { /* both loads hold the pages: serialized again, they give the blob */
      size_t w = 0;
      kvp_serialize_options all = *so;
      check(kvp_serialize(c2, &all, dst, n, &w), "serialize loaded");
      int bad = w != n || memcmp(dst, blob, n) != 0;
      check(kvp_serialize(cache, so, dst, n, &w), "serialize loaded");
      if (bad || w != n || memcmp(dst, blob, n) != 0) {
        fprintf(stderr, "bench_serialize: a file load differs from the saved pages\n");
        exit(1);
      }
    }
    check(kvp_cache_destroy(c2), "destroy");
  }
  const double gb = (double)n / 1e9;
  printf("%-18s %-18s %12zu %10.2f %10.2f %8.2f  (baseline: write(2) + fsync + rename)\n", name, "save to file", n,
         gb / t_save, gb / t_write, t_write / t_save);
  printf("%-18s %-18s %12zu %10.2f %10.2f %8.2f  (baseline: read(2) into fresh MADV_HUGEPAGE memory)\n", name,
         "load_new file", n, gb / t_new, gb / t_read_fresh, t_read_fresh / t_new);
  printf("%-18s %-18s %12zu %10.2f %10.2f %8.2f  (baseline: read(2) into mapped memory)\n", name, "load_into file",
         n, gb / t_into, gb / t_read, t_read / t_into);
  unmap_huge(dst, n);
  unlink(path);
  unlink(raw);
}

int main(int argc, char **argv) {
  int64_t mib = 512;
  int reps = 5;
  int cuda = 0;
  const char *dir = ".";
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--mib") == 0 && i + 1 < argc) mib = atoll(argv[++i]);
    else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = atoi(argv[++i]);
    else if (strcmp(argv[i], "--cuda") == 0) cuda = 1;
    else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) dir = argv[++i];
    else {
      fprintf(stderr, "usage: bench_serialize [--mib N] [--reps N] [--cuda] [--dir DIR]\n");
      return 2;
    }
  }
#if !KVP_HAS_CUDA
  if (cuda) {
    fprintf(stderr, "bench_serialize: --cuda: this build has no CUDA backend\n");
    return 2;
  }
#endif
  if (mib < 8) mib = 8;
  if (reps < 1) reps = 1;

  /* Llama-3-8B-like geometry, 16-token pages: 8 layers, 8 KV heads, head_dim 128, bf16, v3. */
  const int64_t L = 8, H = 8, D = 128, S = 16;
  kvp_config probe;
  kvp_layout_info li;
  check(kvp_config_init(&probe, sizeof probe), "config_init");
  probe.num_hidden_layers = L;
  probe.num_kv_heads = H;
  probe.k_headdim = probe.v_headdim = D;
  probe.max_model_length = 8192;
  probe.page_size = S;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  check(kvp_config_get_layout(&probe, &li), "layout");
  const int64_t pages = (mib << 20) / (li.page_bytes_per_layer * L);
  kvp_config_options co;
  check(kvp_config_options_init(&co, sizeof co), "options");
  co.num_hidden_layers = L;
  co.num_kv_heads = H;
  co.kv_head_dim_size = D;
  co.max_model_length = 8192;
  co.page_size = S;
  co.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  co.budget_bytes = pages * li.page_bytes_per_layer * L;
  kvp_config cfg;
  check(kvp_config_create(&co, &cfg), "config_create");

  /* A host cache filled with a pattern (touches every page once, before timing). */
  kvp_cache *host = NULL;
  check(kvp_cache_create(&cfg, NULL, &host), "cache_create");
  const size_t layer_bytes = (size_t)(pages * li.page_bytes_per_layer);
  for (uint32_t l = 0; l < (uint32_t)L; ++l) {
    kvp_tensor t;
    check(kvp_cache_get_view(host, l, KVP_VIEW_PAGES, &t), "view");
    uint8_t *p = (uint8_t *)t.data;
    for (size_t i = 0; i < layer_bytes; ++i) p[i] = (uint8_t)(i * 131u + l * 7u);
  }
  kvp_cache *cache = host;
  if (cuda) {
    kvp_cache_options opt;
    check(kvp_cache_options_init(&opt, sizeof opt), "cache_options");
    opt.device_type = KVP_DEVICE_CUDA;
    check(kvp_cache_create(&cfg, &opt, &cache), "cuda cache_create");
    size_t n = 0, w = 0;
    check(kvp_serialized_size(host, NULL, &n), "size");
    void *b = malloc(n);
    check(kvp_serialize(host, NULL, b, n, &w), "serialize host");
    check(kvp_deserialize_into(cache, b, n, NULL, 0), "fill device");
    free(b);
  }

  char gpu_name[300] = "";
#if KVP_HAS_CUDA
  if (cuda) {
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    snprintf(gpu_name, sizeof gpu_name, " (%s)", prop.name);
  }
#endif
  char date[64];
  time_t tt = time(NULL);
  strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S UTC", gmtime(&tt));
  printf("bench_serialize  %s  %s\n", date, kvp_build_info());
  printf("cache: %s%s, v3, %lld layers x %lld pages x %lld B (page %lld tokens, %lld KV heads, head_dim %lld, bf16) = "
         "%.1f MiB; chunk 1 MiB; XXH3-64 checksums on; best of %d\n",
         cuda ? "CUDA device 0" : "CPU", gpu_name, (long long)L, (long long)pages, (long long)li.page_bytes_per_layer,
         (long long)S, (long long)H, (long long)D, (double)(layer_bytes * (size_t)L) / 1048576.0, reps);

  /* Selections: whole cache, and every other page (fragmented). */
  int32_t *half = malloc(sizeof(int32_t) * (size_t)pages);
  uint32_t nhalf = 0;
  for (int64_t p = 0; p < pages; p += 2) half[nhalf++] = (int32_t)p;
  const char *names[2] = {"whole cache", "every other page"};

  if (cuda)
    printf("ratio: to a cudaMemcpy of the same bytes between device memory and pinned host memory, in the\n"
           "operation's direction (the 'limit' column), measured in the same run; host memcpy for reference\n");
  printf("%-18s %-18s %12s %10s %10s %8s\n", "selection", "operation", "bytes", "GB/s", cuda ? "limit" : "memcpy",
         "ratio");
  for (int sel = 0; sel < 2; ++sel) {
    kvp_serialize_options so;
    check(kvp_serialize_options_init(&so, sizeof so), "serialize_options");
    if (sel == 1) {
      so.page_ids = half;
      so.num_page_ids = nhalf;
    }
    size_t n = 0, w = 0;
    check(kvp_serialized_size(cache, &so, &n), "size");
    uint8_t *blob = malloc(n);
    uint8_t *copy = malloc(n);
    memset(blob, 1, n);
    memset(copy, 2, n);

    kvp_deserialize_options dop;
    kvp_cache_options copt;
    check(kvp_deserialize_options_init(&dop, sizeof dop), "deserialize_options");
    check(kvp_cache_options_init(&copt, sizeof copt), "cache_options");
    if (cuda) {
      copt.device_type = KVP_DEVICE_CUDA;
      dop.cache_options = &copt;
    }
    /* Interleaved repetitions, so that every operation and its memcpy baseline see the same
     * machine load; the best time of each is kept. Baselines: memcpy between two buffers that
     * are already mapped, and memcpy into freshly allocated memory (what deserialize_new must
     * also pay: mapping and first-touch of a new cache). */
    double t_mem = 1e30, t_fresh = 1e30, t_ser = 1e30, t_into = 1e30, t_new = 1e30, t_hash = 1e30;
    /* Host only: a peer that gets huge pages (memcpy into a fresh 2 MiB-aligned MADV_HUGEPAGE
     * mapping, as numpy's allocator does for large arrays), and deserialize_new with each cache
     * flag: NO_HUGE_PAGES is the behaviour before 1.2 (plain 4 KiB pages), PREFAULT faults the new
     * cache in on every thread before the load writes it. */
    double t_fresh_huge = 1e30, t_new_nohuge = 1e30, t_new_pre = 1e30;
    kvp_deserialize_options dop_nohuge = dop, dop_pre = dop;
    kvp_cache_options copt_nohuge = copt, copt_pre = copt;
    copt_nohuge.flags = KVP_CACHE_FLAG_NO_HUGE_PAGES;
    copt_pre.flags = KVP_CACHE_FLAG_PREFAULT;
    dop_nohuge.cache_options = &copt_nohuge;
    dop_pre.cache_options = &copt_pre;
    double t_d2h = 1e30, t_h2d = 1e30; /* --cuda: pinned copies of the same bytes */
#if KVP_HAS_CUDA
    void *dev = NULL, *pinned = NULL;
    if (cuda) {
      CK(cudaMalloc(&dev, n));
      CK(cudaHostAlloc(&pinned, n, cudaHostAllocDefault));
      CK(cudaMemset(dev, 3, n));
      memset(pinned, 4, n);
    }
#endif
    for (int r = 0; r < reps; ++r) {
#if KVP_HAS_CUDA
      if (cuda) {
        CK(cudaDeviceSynchronize());
        double c0 = bench_now_s();
        CK(cudaMemcpy(pinned, dev, n, cudaMemcpyDeviceToHost));
        double ct = bench_now_s() - c0;
        if (ct < t_d2h) t_d2h = ct;
        c0 = bench_now_s();
        CK(cudaMemcpy(dev, pinned, n, cudaMemcpyHostToDevice));
        CK(cudaDeviceSynchronize());
        ct = bench_now_s() - c0;
        if (ct < t_h2d) t_h2d = ct;
      }
#endif
      double t0 = bench_now_s();
      memcpy(copy, blob, n);
      double t = bench_now_s() - t0;
      g_sink ^= copy[n / 2];
      if (t < t_mem) t_mem = t;

      t0 = bench_now_s();
      uint8_t *fresh = malloc(n);
      memcpy(fresh, blob, n);
      g_sink ^= fresh[n / 3];
      free(fresh);
      t = bench_now_s() - t0;
      if (t < t_fresh) t_fresh = t;

      t0 = bench_now_s();
      check(kvp_serialize(cache, &so, blob, n, &w), "serialize");
      t = bench_now_s() - t0;
      if (t < t_ser) t_ser = t;

      t0 = bench_now_s();
      check(kvp_deserialize_into(cache, blob, n, NULL, 0), "deserialize_into");
      t = bench_now_s() - t0;
      if (t < t_into) t_into = t;

#if defined(KVP_BENCH_HAVE_XXHASH)
      /* The checksum alone, one thread, over the same bytes (for reading the numbers above). */
      t0 = bench_now_s();
      g_sink ^= (uint8_t)XXH3_64bits_withSeed(blob, n, 2);
      t = bench_now_s() - t0;
      if (t < t_hash) t_hash = t;
#endif

      kvp_cache *c2 = NULL;
      t0 = bench_now_s();
      check(kvp_deserialize_new(blob, n, &dop, &c2), "deserialize_new");
      t = bench_now_s() - t0;
      check(kvp_cache_destroy(c2), "destroy");
      if (t < t_new) t_new = t;

      if (!cuda) {
        t0 = bench_now_s();
        uint8_t *huge = map_huge(n);
        memcpy(huge, blob, n);
        g_sink ^= huge[n / 3];
        unmap_huge(huge, n);
        t = bench_now_s() - t0;
        if (t < t_fresh_huge) t_fresh_huge = t;

        t0 = bench_now_s();
        check(kvp_deserialize_new(blob, n, &dop_nohuge, &c2), "deserialize_new (no huge pages)");
        t = bench_now_s() - t0;
        check(kvp_cache_destroy(c2), "destroy");
        if (t < t_new_nohuge) t_new_nohuge = t;

        t0 = bench_now_s();
        check(kvp_deserialize_new(blob, n, &dop_pre, &c2), "deserialize_new (prefault)");
        t = bench_now_s() - t0;
        check(kvp_cache_destroy(c2), "destroy");
        if (t < t_new_pre) t_new_pre = t;
      }
    }
    const double gb = (double)n / 1e9;
#if KVP_HAS_CUDA
    if (cuda) {
      CK(cudaFreeHost(pinned));
      CK(cudaFree(dev));
      printf("%-18s %-18s %12zu %10.2f %10.2f %8.2f  (limit: D2H to pinned)\n", names[sel], "serialize", n,
             gb / t_ser, gb / t_d2h, t_d2h / t_ser);
      printf("%-18s %-18s %12zu %10.2f %10.2f %8.2f  (limit: H2D from pinned)\n", names[sel], "deserialize_into", n,
             gb / t_into, gb / t_h2d, t_h2d / t_into);
      printf("%-18s %-18s %12zu %10.2f %10.2f %8.2f  (limit: H2D from pinned; includes cudaMalloc)\n", names[sel],
             "deserialize_new", n, gb / t_new, gb / t_h2d, t_h2d / t_new);
      printf("%-18s %-18s %12zu %10.2f %10.2f %8.2f  (host memcpy, for reference)\n", names[sel], "memcpy", n,
             gb / t_mem, gb / t_mem, 1.0);
    } else
#endif
    {
      printf("%-18s %-18s %12zu %10.2f %10.2f %8.2f\n", names[sel], "serialize", n, gb / t_ser, gb / t_mem,
             t_mem / t_ser);
      printf("%-18s %-18s %12zu %10.2f %10.2f %8.2f\n", names[sel], "deserialize_into", n, gb / t_into, gb / t_mem,
             t_mem / t_into);
      printf("%-18s %-18s %12zu %10.2f %10.2f %8.2f  (baseline: memcpy into fresh memory)\n", names[sel],
             "deserialize_new", n, gb / t_new, gb / t_fresh, t_fresh / t_new);
      printf("%-18s %-18s %12zu %10.2f %10.2f %8.2f  (baseline: memcpy into fresh MADV_HUGEPAGE memory)\n",
             names[sel], "deserialize_new", n, gb / t_new, gb / t_fresh_huge, t_fresh_huge / t_new);
      printf("%-18s %-18s %12zu %10.2f %10.2f %8.2f  (NO_HUGE_PAGES, as before 1.2; vs the huge-page memcpy)\n",
             names[sel], "deserialize_new", n, gb / t_new_nohuge, gb / t_fresh_huge, t_fresh_huge / t_new_nohuge);
      printf("%-18s %-18s %12zu %10.2f %10.2f %8.2f  (PREFAULT; vs the huge-page memcpy)\n", names[sel],
             "deserialize_new", n, gb / t_new_pre, gb / t_fresh_huge, t_fresh_huge / t_new_pre);
    }
    (void)t_d2h;
    (void)t_h2d;
#if defined(KVP_BENCH_HAVE_XXHASH)
    printf("%-18s %-18s %12zu %10.2f %10.2f %8.2f  (XXH3-64 alone, one thread; vs host memcpy)\n", names[sel], "checksum only", n,
           gb / t_hash, gb / t_mem, t_mem / t_hash);
#endif
    if (!cuda) bench_files(cache, &so, dir, names[sel], blob, n, reps);
    free(copy);
    free(blob);
  }
  free(half);
  if (cache != host) check(kvp_cache_destroy(cache), "destroy");
  check(kvp_cache_destroy(host), "destroy");
  return 0;
}
