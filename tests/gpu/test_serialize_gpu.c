/* Serialization with CUDA caches: the bytes do not depend on the device, so a blob written from
 * a CPU cache loads on the GPU and back, byte for byte. The payload moves between the GPU and
 * the host through two pinned buffers in pieces of 2 MiB, the device copying one while the host
 * hashes the other; the emulated runtime (cuemu) defers every copy into or out of pinned memory
 * until the host waits, so a missing wait shows up here as wrong bytes. Every test skip()s
 * without a GPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

#if KVP_HAS_CUDA
#include <cuda_runtime_api.h>
#endif

static uint8_t *blob_of(const kvp_cache *c, const kvp_serialize_options *o, size_t *n) {
  size_t need = 0, w = 0;
  assert_kvp_ok(kvp_serialized_size(c, o, &need));
  uint8_t *b = malloc(need);
  assert_kvp_ok(kvp_serialize(c, o, b, need, &w));
  assert_int_equal(w, need);
  *n = need;
  return b;
}

static void fill_random(kvp_cache *c, uint64_t seed) {
  kvp_config cfg = KVP_CONFIG_INIT;
  kvp_layout_info li;
  assert_kvp_ok(kvp_cache_get_config(c, &cfg));
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  assert_kvp_ok(kvp_cache_get_layout(c, &li));
  for (uint32_t l = 0; l < (uint32_t)cfg.num_hidden_layers; ++l) {
    kvp_tensor t;
    assert_kvp_ok(kvp_cache_get_view(c, l, KVP_VIEW_PAGES, &t));
    for (int64_t i = 0; i < li.layer_bytes; ++i) ((uint8_t *)t.data)[i] = (uint8_t)kvp_test_rand(&seed);
  }
}

/* Every layer of a and b (any devices) holds the same bytes. */
static void same_layers(const kvp_cache *a, const kvp_cache *b, int line) {
  kvp_config cfg = KVP_CONFIG_INIT;
  kvp_layout_info la, lb;
  assert_kvp_ok(kvp_cache_get_config(a, &cfg));
  memset(&la, 0, sizeof la);
  memset(&lb, 0, sizeof lb);
  la.struct_size = lb.struct_size = sizeof la;
  assert_kvp_ok(kvp_cache_get_layout(a, &la));
  assert_kvp_ok(kvp_cache_get_layout(b, &lb));
  assert_int_equal(la.layer_bytes, lb.layer_bytes);
  const size_t n = (size_t)la.layer_bytes;
  uint8_t *x = malloc(n), *y = malloc(n);
  for (uint32_t l = 0; l < (uint32_t)cfg.num_hidden_layers; ++l) {
    assert_kvp_ok(kvp_cache_read_layer(a, l, x, n, NULL));
    assert_kvp_ok(kvp_cache_read_layer(b, l, y, n, NULL));
    if (memcmp(x, y, n) != 0) fail_msg("line %d: layer %u differs", line, l);
  }
  free(x);
  free(y);
}

#define assert_same_layers(a, b) same_layers((a), (b), __LINE__)

/* A growing in-memory writer (kvp_write_fn). */
typedef struct {
  uint8_t *p;
  size_t n, cap;
  size_t calls;
} membuf;

static int32_t KVP_CALL write_mem(const void *data, size_t size, void *user) {
  membuf *m = (membuf *)user;
  if (m->n + size > m->cap) {
    m->cap = (m->n + size) * 2;
    m->p = realloc(m->p, m->cap);
  }
  memcpy(m->p + m->n, data, size);
  m->n += size;
  ++m->calls;
  return 0;
}

/* A reader (kvp_read_fn) over a buffer that hands out at most `step` bytes per call, so the
 * library cannot view the input in place and must stage every chunk. */
typedef struct {
  const uint8_t *p;
  size_t n, pos, step;
} memreader;

static int32_t KVP_CALL read_mem(void *dst, size_t size, size_t *got, void *user) {
  memreader *r = (memreader *)user;
  size_t k = r->n - r->pos;
  if (k > size) k = size;
  if (k > r->step) k = r->step;
  memcpy(dst, r->p + r->pos, k);
  r->pos += k;
  *got = k;
  return 0;
}

static kvp_cache *load_on_gpu_from_reader(const uint8_t *blob, size_t n, kvp_status expect, const char *msg) {
  kvp_cache_options co;
  kvp_deserialize_options d;
  assert_kvp_ok(kvp_cache_options_init(&co, sizeof co));
  assert_kvp_ok(kvp_deserialize_options_init(&d, sizeof d));
  co.device_type = KVP_DEVICE_CUDA;
  d.cache_options = &co;
  memreader r = {blob, n, 0, 777777};
  kvp_cache *c = NULL;
  assert_kvp_status(kvp_deserialize_new_from_reader(read_mem, &r, &d, &c), expect, msg);
  if (expect != KVP_OK) assert_null(c);
  return c;
}

/* A cache of 4 layers x 40 pages x 64 KiB (8 KV heads, head_dim 128, 16-token pages, bf16): 10
 * MiB of payload, five 2 MiB pieces. */
static kvp_config big_config(void) { return kvp_test_config(4, 8, 128, 16, 40, KVP_DTYPE_BF16, KVP_LAYOUT_V3); }

static void test_serialize_gpu__cpu_and_gpu_blobs_are_identical(void **state) {
  (void)state;
  kvp_test_require_gpu();
  const kvp_layout lays[] = {KVP_LAYOUT_V2, KVP_LAYOUT_V3};
  const int64_t dims[] = {64, 128};
  const kvp_dtype dts[] = {KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN, KVP_DTYPE_F32};
  for (int li = 0; li < 2; ++li)
    for (int di = 0; di < 2; ++di)
      for (int ti = 0; ti < 3; ++ti) {
        kvp_config cfg = kvp_test_config(3, 2, dims[di], 16, 40, dts[ti], lays[li]);
        kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
        fill_random(cpu, (uint64_t)(li * 100 + di * 10 + ti + 1));
        kvp_serialize_options o;
        kvp_serialize_options_init(&o, sizeof o);
        o.chunk_bytes = 100000;
        size_t n = 0, m = 0;
        uint8_t *b = blob_of(cpu, &o, &n);
        /* CPU blob -> new GPU cache -> GPU blob: identical bytes (except nothing). */
        kvp_cache_options co;
        kvp_cache_options_init(&co, sizeof co);
        co.device_type = KVP_DEVICE_CUDA;
        kvp_deserialize_options d;
        kvp_deserialize_options_init(&d, sizeof d);
        d.cache_options = &co;
        kvp_cache *gpu = NULL;
        assert_kvp_ok(kvp_deserialize_new(b, n, &d, &gpu));
        kvp_device_type dt = 0;
        assert_kvp_ok(kvp_cache_get_device(gpu, &dt, NULL));
        assert_int_equal(dt, KVP_DEVICE_CUDA);
        uint8_t *g = blob_of(gpu, &o, &m);
        assert_int_equal(m, n);
        assert_memory_equal(g, b, n);
        /* A scattered subset loaded into other page ids of the GPU cache, read back on the CPU. */
        const int32_t sel[] = {39, 3, 4, 5, 20};
        const int32_t to[] = {0, 10, 11, 30, 31};
        o.page_ids = sel;
        o.num_page_ids = 5;
        size_t ns = 0;
        uint8_t *sb = blob_of(cpu, &o, &ns);
        assert_kvp_ok(kvp_deserialize_into(gpu, sb, ns, to, 5));
        assert_kvp_ok(kvp_deserialize_into(cpu, sb, ns, to, 5));
        o.page_ids = NULL;
        o.num_page_ids = 0;
        free(g);
        free(b);
        b = blob_of(cpu, &o, &n);
        g = blob_of(gpu, &o, &m);
        assert_memory_equal(g, b, n);
        /* A damaged blob leaves the GPU cache unchanged. */
        sb[ns - 20] ^= 1;
        assert_kvp_status(kvp_deserialize_into(gpu, sb, ns, NULL, 0), KVP_ERR_FORMAT_CHECKSUM, "chunk");
        free(g);
        g = blob_of(gpu, &o, &m);
        assert_memory_equal(g, b, n);
        free(sb);
        free(g);
        free(b);
        assert_kvp_ok(kvp_cache_destroy(gpu));
        assert_kvp_ok(kvp_cache_destroy(cpu));
      }
}

/* Pieces of 2 MiB that straddle chunks of every size (64 bytes, odd, larger than a piece, the
 * default), over whole caches and scattered selections, through every entry point: to a buffer
 * and to a writer, from a buffer and from a reader, into a new cache and into chosen pages. */
static void test_serialize_gpu__pipelined_transfers_match_the_cpu(void **state) {
  (void)state;
  kvp_test_require_gpu();
  const kvp_config cfg = big_config();
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  fill_random(cpu, 42);
  kvp_cache *gpu = NULL;
  {
    size_t n = 0;
    uint8_t *b = blob_of(cpu, NULL, &n);
    gpu = load_on_gpu_from_reader(b, n, KVP_OK, "");
    free(b);
  }
  assert_same_layers(cpu, gpu);

  /* 12 pages in 8 runs, not in id order: 3 MiB of payload. */
  const int32_t scattered[] = {39, 0, 1, 2, 17, 18, 5, 33, 34, 35, 36, 10};
  const int32_t dest[] = {3, 4, 5, 6, 7, 20, 21, 22, 23, 30, 31, 38};
  const uint64_t chunks[] = {64, 1000003, 5u << 20, 0};
  for (int ci = 0; ci < 4; ++ci)
    for (int sel = 0; sel < 2; ++sel) {
      kvp_serialize_options o;
      assert_kvp_ok(kvp_serialize_options_init(&o, sizeof o));
      o.chunk_bytes = chunks[ci];
      if (sel == 1) {
        o.page_ids = scattered;
        o.num_page_ids = 12;
      }
      size_t n = 0, m = 0;
      uint8_t *b = blob_of(cpu, &o, &n);
      uint8_t *g = blob_of(gpu, &o, &m);
      assert_int_equal(m, n);
      if (memcmp(g, b, n) != 0) fail_msg("chunk %llu, selection %d: GPU blob differs", (unsigned long long)chunks[ci], sel);
      membuf w = {NULL, 0, 0, 0};
      assert_kvp_ok(kvp_serialize_to_writer(gpu, &o, write_mem, &w));
      assert_int_equal(w.n, n);
      assert_memory_equal(w.p, b, n);
      free(w.p);

      /* Streamed into a new GPU cache: the pages of the blob match, the rest is zero. */
      kvp_cache *fresh = load_on_gpu_from_reader(b, n, KVP_OK, "");
      kvp_cache *expect = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
      assert_kvp_ok(kvp_deserialize_into(expect, b, n, NULL, 0));
      assert_same_layers(fresh, expect);
      assert_kvp_ok(kvp_cache_destroy(fresh));

      /* Into other pages of the existing caches, from a buffer and from a reader. */
      if (sel == 1) {
        assert_kvp_ok(kvp_deserialize_into(gpu, b, n, dest, 12));
        assert_kvp_ok(kvp_deserialize_into(cpu, b, n, dest, 12));
        assert_same_layers(gpu, cpu);
        fill_random(cpu, 100 + (uint64_t)ci); /* new contents for the next round */
        uint8_t *whole = blob_of(cpu, NULL, &m);
        memreader rw = {whole, m, 0, 1u << 20};
        assert_kvp_ok(kvp_deserialize_into_from_reader(gpu, read_mem, &rw, NULL, 0));
        assert_same_layers(gpu, cpu);
        memreader rs = {b, n, 0, 4099};
        assert_kvp_ok(kvp_deserialize_into_from_reader(gpu, read_mem, &rs, dest, 12));
        assert_kvp_ok(kvp_deserialize_into(cpu, b, n, dest, 12));
        assert_same_layers(gpu, cpu);
        free(whole);
      }
      assert_kvp_ok(kvp_cache_destroy(expect));
      free(g);
      free(b);
    }
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

/* A second serialization of the same cache while the first is under way (const calls may run
 * concurrently) cannot share the cache's pinned buffers; it gets buffers of its own. Here the
 * second one runs from the first one's writer callback, so the two certainly overlap. */
typedef struct {
  const kvp_cache *gpu;
  const uint8_t *expect;
  size_t expect_n;
  membuf out;
  int nested_done;
} nested_writer;

static int32_t KVP_CALL write_and_nest(const void *data, size_t size, void *user) {
  nested_writer *w = (nested_writer *)user;
  /* After the header, the table and chunks 0 and 1: this call hands over chunk 2 (1 MiB chunks),
   * which ends in the middle of the second 2 MiB piece, while the third piece is in flight. */
  if (!w->nested_done && w->out.calls == 4) {
    w->nested_done = 1;
    size_t n = 0, got = 0;
    if (kvp_serialized_size(w->gpu, NULL, &n) != KVP_OK || n != w->expect_n) return 1;
    uint8_t *b = malloc(n);
    const kvp_status st = kvp_serialize(w->gpu, NULL, b, n, &got);
    const int same = st == KVP_OK && got == n && memcmp(b, w->expect, n) == 0;
    free(b);
    if (!same) return 2;
  }
  return write_mem(data, size, &w->out);
}

static void test_serialize_gpu__concurrent_serializations_use_separate_buffers(void **state) {
  (void)state;
  kvp_test_require_gpu();
  const kvp_config cfg = big_config();
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  fill_random(cpu, 7);
  size_t n = 0;
  uint8_t *b = blob_of(cpu, NULL, &n);
  kvp_cache *gpu = load_on_gpu_from_reader(b, n, KVP_OK, "");
  nested_writer w = {gpu, b, n, {NULL, 0, 0, 0}, 0};
  assert_kvp_ok(kvp_serialize_to_writer(gpu, NULL, write_and_nest, &w));
  assert_true(w.nested_done);
  assert_int_equal(w.out.n, n);
  assert_memory_equal(w.out.p, b, n);
  free(w.out.p);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

/* A checksum error in the last chunk of a streamed blob: no cache is returned and the device
 * memory it had taken is released. A damaged blob given to kvp_deserialize_into changes nothing. */
static void test_serialize_gpu__a_damaged_blob_loads_nothing(void **state) {
  (void)state;
  kvp_test_require_gpu();
  const kvp_config cfg = big_config();
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  fill_random(cpu, 9);
  size_t n = 0, m = 0;
  uint8_t *b = blob_of(cpu, NULL, &n);
  kvp_memory_stats before, after;
  assert_kvp_ok(kvp_device_memory_stats(KVP_DEVICE_CUDA, 0, &before));
  b[n - 20] ^= 0x40;
  (void)load_on_gpu_from_reader(b, n, KVP_ERR_FORMAT_CHECKSUM, "chunk 9 of 10");
  assert_kvp_ok(kvp_device_memory_stats(KVP_DEVICE_CUDA, 0, &after));
  assert_int_equal(after.bytes_in_use, before.bytes_in_use);

  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  uint8_t *zero = blob_of(gpu, NULL, &m);
  memreader r = {b, n, 0, 65536};
  assert_kvp_status(kvp_deserialize_into_from_reader(gpu, read_mem, &r, NULL, 0), KVP_ERR_FORMAT_CHECKSUM, "chunk 9");
  assert_kvp_status(kvp_deserialize_into(gpu, b, n, NULL, 0), KVP_ERR_FORMAT_CHECKSUM, "chunk 9");
  uint8_t *now = blob_of(gpu, NULL, &m);
  assert_memory_equal(now, zero, m);
  free(now);
  free(zero);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

#if KVP_HAS_CUDA
/* While a blocking stream captures a graph (global mode), the legacy default stream the
 * serialization calls (and the layer copies on NULL) copy on cannot be used: they return
 * KVP_ERR_UNSUPPORTED before touching the output or the cache, and the capture stays valid. */
static void test_serialize_gpu__refused_during_a_graph_capture(void **state) {
  (void)state;
  kvp_test_require_gpu();
  const kvp_config cfg = kvp_test_config(2, 2, 64, 16, 8, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  fill_random(cpu, 3);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  size_t n = 0, m = 0, w = 0;
  uint8_t *b = blob_of(cpu, NULL, &n);
  uint8_t *zero = blob_of(gpu, NULL, &m);
  uint8_t *out = malloc(n);
  memset(out, 0xA5, n);

  cudaStream_t s = NULL;
  CUDA_OK(cudaStreamCreateWithFlags(&s, 0)); /* blocking */
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  assert_kvp_status(kvp_serialize(gpu, NULL, out, n, &w), KVP_ERR_UNSUPPORTED, "captured");
  for (size_t i = 0; i < n; ++i)
    if (out[i] != 0xA5) fail_msg("output byte %zu was written", i);
  assert_kvp_status(kvp_deserialize_into(gpu, b, n, NULL, 0), KVP_ERR_UNSUPPORTED, "captured");
  /* The layer copies on NULL (the legacy stream) are refused the same way. */
  kvp_layout_info li;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  assert_kvp_ok(kvp_cache_get_layout(gpu, &li));
  uint8_t *layer = malloc((size_t)li.layer_bytes);
  memset(layer, 0x5A, (size_t)li.layer_bytes);
  assert_kvp_status(kvp_cache_read_layer(gpu, 0, layer, (size_t)li.layer_bytes, NULL), KVP_ERR_UNSUPPORTED,
                    "captured");
  for (int64_t i = 0; i < li.layer_bytes; ++i)
    if (layer[i] != 0x5A) fail_msg("layer byte %lld was written", (long long)i);
  assert_kvp_status(kvp_cache_write_layer(gpu, 0, layer, (size_t)li.layer_bytes, NULL), KVP_ERR_UNSUPPORTED,
                    "captured");
  free(layer);
  cudaGraph_t graph = NULL;
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  assert_non_null(graph);
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaStreamDestroy(s));

  uint8_t *now = blob_of(gpu, NULL, &m);
  assert_memory_equal(now, zero, m);
  assert_kvp_ok(kvp_deserialize_into(gpu, b, n, NULL, 0));
  assert_same_layers(gpu, cpu);
  free(now);
  free(out);
  free(zero);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}
#endif

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_serialize_gpu__cpu_and_gpu_blobs_are_identical),
      cmocka_unit_test(test_serialize_gpu__pipelined_transfers_match_the_cpu),
      cmocka_unit_test(test_serialize_gpu__concurrent_serializations_use_separate_buffers),
      cmocka_unit_test(test_serialize_gpu__a_damaged_blob_loads_nothing),
#if KVP_HAS_CUDA
      cmocka_unit_test(test_serialize_gpu__refused_during_a_graph_capture),
#endif
  };
  return cmocka_run_group_tests_name("serialize_gpu", tests, NULL, NULL);
}
