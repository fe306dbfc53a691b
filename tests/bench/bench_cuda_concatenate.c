/* Benchmark of kvp_concatenate on a CUDA cache (v3 layout, one layer).
 *
 * Shapes (kv_heads x head_dim): 8x128 (Llama-3-8B), 8x64, 1x128, 32x128; cache bf16 and fp8 e4m3fn
 * ("fp8-stored"), inputs bf16; tokens 1 … 16384. Batches: up to 256 tokens, one decode token per
 * request; above, prefill chunks of up to 2048 tokens per request.
 *
 * Reported per row:
 *   host-md us   time per call with host-resident metadata (validated on the host, runs uploaded)
 *   dev-md us    time per call with device-resident metadata (what an engine uses with graphs)
 *   GB/s         (bytes read from key/value + bytes written to the cache) / dev-md time
 *   copy GB/s    2 * (bytes written) / time of a cudaMemcpyAsync D2D of the written bytes, same run
 *   ratio        GB/s / copy GB/s (target >= 0.85 at >= 4096 tokens)
 *   graph us     per call, 32 calls captured in one CUDA graph and replayed (tokens <= 256;
 *                target <= 3 us)
 *
 * Usage: bench_cuda_concatenate [max_tokens]. Without a CUDA device it prints "no CUDA device"
 * and exits 0. KVP_BENCH_ITERS=n overrides the iteration counts (for a quick smoke run). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvpages.h"

#if KVP_HAS_CUDA
#include <cuda_runtime_api.h>

#define CK(expr)                                                                                  \
  do {                                                                                            \
    cudaError_t e_ = (expr);                                                                      \
    if (e_ != cudaSuccess) {                                                                      \
      fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_));    \
      exit(1);                                                                                    \
    }                                                                                             \
  } while (0)
#define KK(expr)                                                                                  \
  do {                                                                                            \
    kvp_status s_ = (expr);                                                                       \
    if (s_ != KVP_OK) {                                                                           \
      fprintf(stderr, "%s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #expr, kvp_status_name(s_),    \
              kvp_last_error_message());                                                          \
      exit(1);                                                                                    \
    }                                                                                             \
  } while (0)

typedef struct dev_md {
  kvp_metadata *md;
  void *bufs[8];
  int n;
} dev_md;

static const int32_t *up(dev_md *d, const int32_t *h, int64_t len) {
  void *p;
  if (h == NULL || len <= 0) return NULL;
  CK(cudaMalloc(&p, (size_t)len * 4));
  CK(cudaMemcpy(p, h, (size_t)len * 4, cudaMemcpyHostToDevice));
  d->bufs[d->n++] = p;
  return (const int32_t *)p;
}

static void make_dev_md(dev_md *d, const kvp_metadata *host) {
  kvp_metadata_desc x;
  memset(d, 0, sizeof *d);
  KK(kvp_metadata_desc_init(&x, sizeof x));
  KK(kvp_metadata_get_desc(host, &x));
  x.pages_tables = up(d, x.pages_tables, x.num_reqs * x.pages_per_req);
  x.context_lens = up(d, x.context_lens, x.context_lens_len);
  x.query_start_loc = up(d, x.query_start_loc, x.query_start_loc_len);
  x.num_seqs = up(d, x.num_seqs, x.num_seqs_len);
  x.request_distribution = up(d, x.request_distribution, x.request_distribution_len);
  x.slot_mapping = NULL;
  x.num_slices = 0;
  x.num_kv_update_slices = NULL;
  x.num_kv_update_slices_len = 0;
  x.position_ids = NULL;
  x.position_ids_len = 0;
  x.device_type = KVP_DEVICE_CUDA;
  x.device_id = 0;
  KK(kvp_metadata_create(&x, &d->md));
}

static void free_dev_md(dev_md *d) {
  kvp_metadata_destroy(d->md);
  for (int i = 0; i < d->n; ++i) cudaFree(d->bufs[i]);
}

static float time_calls(cudaStream_t s, int iters, kvp_cache *c, const kvp_tensor *k, const kvp_tensor *v,
                        const kvp_metadata *md) {
  cudaEvent_t a, b;
  float ms = 0;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) KK(kvp_concatenate(c, 0, k, v, md, (kvp_stream)s));
  CK(cudaEventRecord(a, s));
  for (int i = 0; i < iters; ++i) KK(kvp_concatenate(c, 0, k, v, md, (kvp_stream)s));
  CK(cudaEventRecord(b, s));
  CK(cudaEventSynchronize(b));
  CK(cudaEventElapsedTime(&ms, a, b));
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  return ms * 1000.0f / (float)iters; /* us per call */
}

static float time_copy(cudaStream_t s, int iters, void *dst, const void *src, size_t bytes) {
  cudaEvent_t a, b;
  float ms = 0;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
  CK(cudaEventRecord(a, s));
  for (int i = 0; i < iters; ++i) CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
  CK(cudaEventRecord(b, s));
  CK(cudaEventSynchronize(b));
  CK(cudaEventElapsedTime(&ms, a, b));
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  return ms * 1000.0f / (float)iters;
}

static float time_graph(cudaStream_t s, kvp_cache *c, const kvp_tensor *k, const kvp_tensor *v, const kvp_metadata *md) {
  const int per_graph = 32;
  const int quick = getenv("KVP_BENCH_ITERS") != NULL; /* smoke run: one warm-up, one replay */
  const int replays = quick ? 1 : 200;
  cudaGraph_t g;
  cudaGraphExec_t e;
  cudaEvent_t a, b;
  float ms = 0;
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  for (int i = 0; i < per_graph; ++i) KK(kvp_concatenate(c, 0, k, v, md, (kvp_stream)s));
  CK(cudaStreamEndCapture(s, &g));
  CK(cudaGraphInstantiate(&e, g, 0));
  for (int i = 0; i < (quick ? 1 : 5); ++i) CK(cudaGraphLaunch(e, s));
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  CK(cudaEventRecord(a, s));
  for (int i = 0; i < replays; ++i) CK(cudaGraphLaunch(e, s));
  CK(cudaEventRecord(b, s));
  CK(cudaEventSynchronize(b));
  CK(cudaEventElapsedTime(&ms, a, b));
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  CK(cudaGraphExecDestroy(e));
  CK(cudaGraphDestroy(g));
  return ms * 1000.0f / (float)(per_graph * replays);
}

static uint64_t rng_state = 0x1234567;
static uint32_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)rng_state;
}

static void bench_row(cudaStream_t s, int64_t H, int64_t D, kvp_dtype cdt, int64_t T, void *scratch_a, void *scratch_b) {
  const int64_t S = 128;
  /* Requests. */
  int64_t nreq, per;
  if (T <= 256) {
    nreq = T;
    per = 1;
  } else {
    per = T < 2048 ? T : 2048;
    nreq = T / per;
  }
  /* Pages: decode requests use one page each (context < S), prefill chunks cdiv(per, S). */
  const int64_t pages_per = T <= 256 ? 1 : (per + S - 1) / S;
  const int64_t P = nreq * pages_per + 2;
  kvp_config_options o;
  kvp_config cfg;
  kvp_layout_info li;
  KK(kvp_config_options_init(&o, sizeof o));
  o.num_hidden_layers = 1;
  o.num_kv_heads = H;
  o.kv_head_dim_size = D;
  o.max_model_length = 4096;
  o.page_size = S;
  o.kvdtype = cdt;
  o.version = KVP_LAYOUT_V3;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  {
    kvp_config probe;
    KK(kvp_config_init(&probe, sizeof probe));
    probe.num_hidden_layers = 1;
    probe.num_kv_heads = H;
    probe.k_headdim = probe.v_headdim = D;
    probe.max_model_length = 4096;
    probe.page_size = S;
    probe.kvdtype = cdt;
    probe.version = KVP_LAYOUT_V3;
    li.struct_size = sizeof li;
    KK(kvp_config_get_layout(&probe, &li));
    o.budget_bytes = li.page_bytes_per_layer * P;
  }
  KK(kvp_config_create(&o, &cfg));
  kvp_cache_options co;
  kvp_cache *c = NULL;
  KK(kvp_cache_options_init(&co, sizeof co));
  co.device_type = KVP_DEVICE_CUDA;
  KK(kvp_cache_create(&cfg, &co, &c));
  li.struct_size = sizeof li;
  KK(kvp_cache_get_layout(c, &li));

  kvp_batch_request *reqs = (kvp_batch_request *)calloc((size_t)nreq, sizeof *reqs);
  int32_t *pages = (int32_t *)malloc((size_t)(nreq * pages_per) * 4);
  for (int64_t i = 0; i < nreq * pages_per; ++i) pages[i] = (int32_t)(i + 1);
  for (int64_t i = 0; i < nreq; ++i) {
    reqs[i].num_computed = T <= 256 ? (int64_t)(1 + rnd() % (S - 1)) : 0;
    reqs[i].num_scheduled = per;
    reqs[i].page_ids = pages + i * pages_per;
    reqs[i].num_pages = pages_per;
  }
  kvp_metadata *md = NULL;
  KK(kvp_metadata_build(&cfg, reqs, (uint32_t)nreq, NULL, NULL, &md));
  dev_md dmd;
  make_dev_md(&dmd, md);

  /* Inputs [T, H, D] bf16 (random bits of moderate values). */
  const size_t in_bytes = (size_t)(T * H * D) * 2;
  uint16_t *h = (uint16_t *)malloc(in_bytes);
  for (size_t i = 0; i < in_bytes / 2; ++i) h[i] = (uint16_t)(0x3C00u + (rnd() & 0x3FFu)) ^ (uint16_t)((rnd() & 1) << 15);
  void *kd, *vd;
  CK(cudaMalloc(&kd, in_bytes));
  CK(cudaMalloc(&vd, in_bytes));
  CK(cudaMemcpy(kd, h, in_bytes, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(vd, h, in_bytes, cudaMemcpyHostToDevice));
  kvp_tensor k;
  memset(&k, 0, sizeof k);
  k.data = kd;
  k.dtype = KVP_DTYPE_BF16;
  k.ndim = 3;
  k.shape[0] = T;
  k.shape[1] = H;
  k.shape[2] = D;
  k.strides[0] = H * D;
  k.strides[1] = D;
  k.strides[2] = 1;
  k.device_type = KVP_DEVICE_CUDA;
  kvp_tensor v = k;
  v.data = vd;

  const size_t row_bytes = (size_t)(li.layer_bytes / (li.shape[0] * li.shape[1]));
  const size_t written = (size_t)T * row_bytes;
  const size_t moved = written + 2 * in_bytes;
  int iters = (int)(400000000.0 / (double)moved);
  if (iters < 20) iters = 20;
  if (iters > 2000) iters = 2000;
  if (getenv("KVP_BENCH_ITERS") != NULL) iters = atoi(getenv("KVP_BENCH_ITERS")); /* quick smoke runs */
  if (iters < 1) iters = 1;
  const float t_host = time_calls(s, iters, c, &k, &v, md);
  const float t_dev = time_calls(s, iters, c, &k, &v, dmd.md);
  const float t_copy = time_copy(s, iters, scratch_a, scratch_b, written);
  const double gbs = (double)moved / (t_dev * 1e3);
  const double copy_gbs = 2.0 * (double)written / (t_copy * 1e3);
  char graph[32] = "-";
  if (T <= 256) snprintf(graph, sizeof graph, "%.2f", time_graph(s, c, &k, &v, dmd.md));
  kvp_status async = KVP_OK;
  KK(kvp_cache_get_async_error(c, &async));
  if (async != KVP_OK) {
    fprintf(stderr, "async error: %s\n", kvp_last_error_message());
    exit(1);
  }
  printf("%4lldx%-4lld %-10s %6lld %10.2f %10.2f %9.1f %9.1f %6.2f %9s\n", (long long)H, (long long)D,
         kvp_dtype_name(cdt), (long long)T, t_host, t_dev, gbs, copy_gbs, gbs / copy_gbs, graph);
  fflush(stdout);

  CK(cudaFree(kd));
  CK(cudaFree(vd));
  free(h);
  free_dev_md(&dmd);
  KK(kvp_metadata_destroy(md));
  free(pages);
  free(reqs);
  KK(kvp_cache_destroy(c));
}

int main(int argc, char **argv) {
  int32_t n = 0;
  KK(kvp_device_count(&n));
  if (n == 0) {
    printf("no CUDA device: nothing to benchmark\n");
    return 0;
  }
  int64_t max_tokens = argc > 1 ? atoll(argv[1]) : 16384;
  struct cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  char date[64];
  time_t now = time(NULL);
  strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
  printf("kvp_concatenate on CUDA: device %s (%d SMs), %s\n%s\n", prop.name, prop.multiProcessorCount, date,
         kvp_build_info());
  printf("layout v3, page_size 128, inputs bf16 [T, H, D] contiguous, one layer\n\n");
  printf("%9s %-10s %6s %10s %10s %9s %9s %6s %9s\n", "HxD", "cache", "tokens", "host-md us", "dev-md us", "GB/s",
         "copy GB/s", "ratio", "graph us");
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const size_t scratch = (size_t)16384 * 64 * 128 * 2; /* the largest written size (32x128 bf16) */
  void *sa, *sb;
  CK(cudaMalloc(&sa, scratch));
  CK(cudaMalloc(&sb, scratch));
  CK(cudaMemset(sb, 0, scratch));
  static const int64_t shapes[4][2] = {{8, 128}, {8, 64}, {1, 128}, {32, 128}};
  static const kvp_dtype dts[2] = {KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN};
  static const int64_t tokens[] = {1, 4, 16, 64, 256, 1024, 4096, 16384};
  for (int si = 0; si < 4; ++si)
    for (int di = 0; di < 2; ++di) {
      for (size_t ti = 0; ti < sizeof tokens / sizeof tokens[0]; ++ti)
        if (tokens[ti] <= max_tokens) bench_row(s, shapes[si][0], shapes[si][1], dts[di], tokens[ti], sa, sb);
      printf("\n");
    }
  CK(cudaFree(sa));
  CK(cudaFree(sb));
  CK(cudaStreamDestroy(s));
  return 0;
}

#else
int main(void) {
  printf("no CUDA device: this build of kvpages has no CUDA backend\n");
  return 0;
}
#endif
