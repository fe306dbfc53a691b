/* `kvp demo`: the README's main job. A small serving loop on the CPU:
 *   - a model-shaped cache (Llama-3.2-1B-like: 16 layers, 8 KV heads of 64 -> the v3 head_dim-64
 *     layout, bf16, page 16, a few hundred pages);
 *   - a handful of requests arriving at different steps with different prompt lengths;
 *   - a token budget per step: decodes first, then chunked prefill of the waiting prompts;
 *   - pages from a simple free list (page 0 is the reserved null page);
 *   - each step: kvp_metadata_build(), then kvp_concatenate() for every layer, timed;
 *   - each finished request is read back through the KVP_VIEW_KEYS / KVP_VIEW_VALUES views and
 *     compared with the values written; any mismatch makes the demo exit with status 1.
 * Options: --layout v2|v3, --dtype NAME (cache dtype), --layers N, --quiet. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvp_tool.h"

#define DEMO_REQS 6
#define DEMO_HEADS 8
#define DEMO_HEAD_DIM 64
#define DEMO_PAGE 16
#define DEMO_MAX_LEN 1024
#define DEMO_TOKEN_BUDGET 256

typedef struct demo_req {
  int id;
  int arrival; /* step at which it arrives */
  int64_t prompt, gen; /* prompt tokens, tokens to generate */
  int64_t computed;    /* tokens in the cache */
  int32_t pages[DEMO_MAX_LEN / DEMO_PAGE];
  int64_t num_pages;
  int done, checked;
} demo_req;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The value written for (request, position, layer, head, lane, key/value): a multiple of 0.5 in
 * [-3.5, 3.5], exactly representable in every storage dtype (fp8 included). */
static float demo_value(int req, int64_t pos, int64_t layer, int64_t h, int64_t d, int kv) {
  uint32_t x = (uint32_t)(req * 131 + pos * 31 + layer * 17 + h * 7 + d * 3 + kv * 5);
  x ^= x >> 7;
  return (float)((int)(x % 15u) - 7) * 0.5f;
}

static uint16_t bf16_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)(u >> 16); /* exact for the demo's values */
}

/* Decodes one stored element to float (small generic decoder for the storage dtypes). */
static float decode(const unsigned char *p, kvp_dtype dt) {
  uint32_t c = 0, e, m, s;
  int E, M, bias;
  switch (dt) {
    case KVP_DTYPE_F32: {
      float f;
      memcpy(&f, p, 4);
      return f;
    }
    case KVP_DTYPE_BF16: {
      uint16_t h;
      float f;
      memcpy(&h, p, 2);
      c = (uint32_t)h << 16;
      memcpy(&f, &c, 4);
      return f;
    }
    case KVP_DTYPE_F16: memcpy(&c, p, 2); E = 5; M = 10; break;
    case KVP_DTYPE_F8_E4M3FN: c = *p; E = 4; M = 3; break;
    default: c = *p; E = 5; M = 2; break;
  }
  bias = (1 << (E - 1)) - 1;
  s = (c >> (E + M)) & 1u;
  e = (c >> M) & ((1u << E) - 1u);
  m = c & ((1u << M) - 1u);
  {
    double v = e == 0 ? ldexp((double)m, 1 - bias - M) : ldexp((double)((1u << M) + m), (int)e - bias - M);
    return (float)(s ? -v : v);
  }
}

/* Reads back every token of a request through the key and value views of every layer. */
static int64_t check_request(kvp_cache *cache, const demo_req *r, int64_t layers, kvp_dtype dt) {
  int64_t bad = 0, l, pos, h, d;
  const size_t isz = kvp_dtype_bits(dt) / 8;
  for (l = 0; l < layers; ++l) {
    int kv;
    for (kv = 0; kv < 2; ++kv) {
      kvp_tensor view;
      if (kvp_cache_get_view(cache, (uint32_t)l, kv ? KVP_VIEW_VALUES : KVP_VIEW_KEYS, &view) != KVP_OK) {
        fprintf(stderr, "kvp demo: %s\n", kvp_last_error_message());
        return -1;
      }
      for (pos = 0; pos < r->computed; ++pos) {
        const int64_t page = r->pages[pos / DEMO_PAGE], row = pos % DEMO_PAGE;
        for (h = 0; h < DEMO_HEADS; ++h)
          for (d = 0; d < DEMO_HEAD_DIM; ++d) {
            const unsigned char *p =
                (const unsigned char *)view.data +
                (size_t)(page * view.strides[0] + row * view.strides[1] + h * view.strides[2] + d * view.strides[3]) *
                    isz;
            const float want = demo_value(r->id, pos, l, h, d, kv);
            if (decode(p, dt) != want) {
              if (bad < 5)
                fprintf(stderr, "  mismatch: request %d pos %" PRId64 " layer %" PRId64 " %s head %" PRId64
                                " lane %" PRId64 ": %g != %g\n",
                        r->id, pos, l, kv ? "value" : "key", h, d, (double)decode(p, dt), (double)want);
              bad++;
            }
          }
      }
    }
  }
  return bad;
}

int kvp_cmd_demo(int argc, char **argv) {
  kvp_config_options o;
  kvp_config cfg;
  kvp_cache *cache = NULL;
  kvp_layout layout = KVP_LAYOUT_V3;
  kvp_dtype dtype = KVP_DTYPE_BF16;
  int64_t layers = 16;
  int quiet = 0, i, step, rc = 1;
  demo_req reqs[DEMO_REQS];
  static const int arrival[DEMO_REQS] = {0, 0, 1, 3, 6, 10};
  static const int64_t prompt[DEMO_REQS] = {37, 300, 128, 513, 5, 90};
  static const int64_t gen[DEMO_REQS] = {40, 24, 64, 16, 80, 32};
  int32_t *free_list = NULL;
  int64_t nfree = 0, total_tokens = 0, bytes_per_token = 0, checked_tokens = 0, mismatches = 0;
  double concat_time = 0.0, t_start;
  uint16_t *kbuf = NULL, *vbuf = NULL;

  for (i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--layout") == 0 && i + 1 < argc) {
      if (kvp_layout_from_string(argv[++i], &layout) != KVP_OK) {
        fprintf(stderr, "kvp demo: %s\n", kvp_last_error_message());
        return 2;
      }
    } else if (strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
      if (kvp_dtype_from_string(argv[++i], &dtype) != KVP_OK) {
        fprintf(stderr, "kvp demo: %s\n", kvp_last_error_message());
        return 2;
      }
    } else if (strcmp(argv[i], "--layers") == 0 && i + 1 < argc) {
      if (kvp_tool_parse_int(argv[++i], &layers) != 0 || layers > 64) {
        fprintf(stderr, "kvp demo: --layers needs an integer in [1, 64]\n");
        return 2;
      }
    } else if (strcmp(argv[i], "--quiet") == 0) {
      quiet = 1;
    } else {
      fprintf(stderr, "usage: kvp demo [--layout v2|v3] [--dtype bf16|fp16|fp32|fp8_e4m3fn|fp8_e5m2] [--layers N] [--quiet]\n");
      return strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }

  printf("%s\n\n", kvp_build_info());
  /* Llama-3.2-1B-like, sized to ~320 pages of 16 tokens. */
  kvp_config_options_init(&o, sizeof o);
  o.num_hidden_layers = layers;
  o.num_kv_heads = DEMO_HEADS;
  o.kv_head_dim_size = DEMO_HEAD_DIM;
  o.max_model_length = DEMO_MAX_LEN;
  o.page_size = DEMO_PAGE;
  o.kvdtype = dtype;
  o.version = layout;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  {
    kvp_config probe;
    kvp_layout_info li;
    kvp_config_init(&probe, sizeof probe);
    probe.num_hidden_layers = layers;
    probe.num_kv_heads = DEMO_HEADS;
    probe.k_headdim = probe.v_headdim = DEMO_HEAD_DIM;
    probe.max_model_length = DEMO_MAX_LEN;
    probe.page_size = DEMO_PAGE;
    probe.kvdtype = dtype;
    probe.version = layout;
    li.struct_size = sizeof li;
    if (kvp_config_get_layout(&probe, &li) != KVP_OK) {
      fprintf(stderr, "kvp demo: %s\n", kvp_last_error_message());
      return 1;
    }
    o.budget_bytes = li.page_bytes_per_layer * layers * 320;
  }
  if (kvp_config_create(&o, &cfg) != KVP_OK) {
    fprintf(stderr, "kvp demo: %s\n", kvp_last_error_message());
    return 1;
  }
  if (kvp_tool_print_plan(&cfg, "demo budget: 320 pages") != 0) return 1;
  if (kvp_cache_create(&cfg, NULL, &cache) != KVP_OK) {
    fprintf(stderr, "kvp demo: %s\n", kvp_last_error_message());
    return 1;
  }

  /* Free list of pages 1 .. num_pages-1 (page 0 is the null page). */
  free_list = (int32_t *)malloc(sizeof(int32_t) * (size_t)cfg.num_pages);
  kbuf = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)(layers * DEMO_TOKEN_BUDGET * DEMO_HEADS * DEMO_HEAD_DIM));
  vbuf = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)(layers * DEMO_TOKEN_BUDGET * DEMO_HEADS * DEMO_HEAD_DIM));
  if (free_list == NULL || kbuf == NULL || vbuf == NULL) {
    fprintf(stderr, "kvp demo: out of memory\n");
    goto out;
  }
  for (i = (int)cfg.num_pages - 1; i >= 1; --i) free_list[nfree++] = i;
  for (i = 0; i < DEMO_REQS; ++i) {
    memset(&reqs[i], 0, sizeof reqs[i]);
    reqs[i].id = i;
    reqs[i].arrival = arrival[i];
    reqs[i].prompt = prompt[i];
    reqs[i].gen = gen[i];
  }
  bytes_per_token = 2 * DEMO_HEADS * DEMO_HEAD_DIM * 2; /* bf16 K and V in */

  printf("\nserving %d requests (prompts 37..513 tokens, chunked prefill, token budget %d per step), "
         "%s layout, %s cache, %" PRId64 " layers\n",
         DEMO_REQS, DEMO_TOKEN_BUDGET, kvp_layout_name(cfg.version), kvp_dtype_name(cfg.kvdtype), layers);
  t_start = now_s();
  for (step = 0;; ++step) {
    kvp_batch_request br[DEMO_REQS];
    int idx[DEMO_REQS];
    int32_t order[DEMO_REQS];
    int nb = 0, pass, ndec = 0, npre = 0, all_done = 1;
    int64_t budget = DEMO_TOKEN_BUDGET, T = 0, row, t, l;
    kvp_metadata *md = NULL;
    const int32_t *qsl;
    int64_t nq;
    double t0, dt_s;

    for (i = 0; i < DEMO_REQS; ++i) all_done &= reqs[i].done;
    if (all_done) break;
    if (step > 100000) {
      fprintf(stderr, "kvp demo: the scheduler made no progress\n");
      goto out;
    }
    /* Schedule: decodes first (one token each), then prefill chunks, within the token budget. */
    for (pass = 0; pass < 2; ++pass)
      for (i = 0; i < DEMO_REQS; ++i) {
        demo_req *r = &reqs[i];
        const int decoding = r->computed >= r->prompt;
        int64_t sched, need;
        if (r->done || r->arrival > step || decoding != (pass == 0) || budget == 0) continue;
        sched = decoding ? 1 : r->prompt - r->computed;
        if (sched > budget) sched = budget;
        need = (r->computed + sched + DEMO_PAGE - 1) / DEMO_PAGE;
        if (need - r->num_pages > nfree) continue; /* no pages now: wait */
        while (r->num_pages < need) r->pages[r->num_pages++] = free_list[--nfree];
        br[nb].num_computed = r->computed;
        br[nb].num_scheduled = sched;
        br[nb].page_ids = r->pages;
        br[nb].num_pages = r->num_pages;
        idx[nb++] = i;
        budget -= sched;
        if (decoding && r->computed > 0) ndec++; else npre++;
      }
    if (nb == 0) continue;
    if (kvp_metadata_build(&cfg, br, (uint32_t)nb, NULL, order, &md) != KVP_OK ||
        kvp_metadata_get_array(md, KVP_METADATA_QUERY_START_LOC, &qsl, &nq) != KVP_OK) {
      fprintf(stderr, "kvp demo: %s\n", kvp_last_error_message());
      kvp_metadata_destroy(md);
      goto out;
    }
    /* The "model": new keys/values for every layer, packed in the builder's row order. */
    T = qsl[nb];
    for (row = 0; row < nb; ++row) {
      const kvp_batch_request *b = &br[order[row]];
      const int id = reqs[idx[order[row]]].id;
      for (t = 0; t < b->num_scheduled; ++t)
        for (l = 0; l < layers; ++l) {
          int64_t h, d;
          const int64_t base = ((l * DEMO_TOKEN_BUDGET) + qsl[row] + t) * DEMO_HEADS * DEMO_HEAD_DIM;
          for (h = 0; h < DEMO_HEADS; ++h)
            for (d = 0; d < DEMO_HEAD_DIM; ++d) {
              kbuf[base + h * DEMO_HEAD_DIM + d] = bf16_bits(demo_value(id, b->num_computed + t, l, h, d, 0));
              vbuf[base + h * DEMO_HEAD_DIM + d] = bf16_bits(demo_value(id, b->num_computed + t, l, h, d, 1));
            }
        }
    }
    t0 = now_s();
    for (l = 0; l < layers; ++l) {
      kvp_tensor k, v;
      memset(&k, 0, sizeof k);
      k.data = kbuf + l * DEMO_TOKEN_BUDGET * DEMO_HEADS * DEMO_HEAD_DIM;
      k.dtype = KVP_DTYPE_BF16;
      k.ndim = 3;
      k.shape[0] = T;
      k.shape[1] = DEMO_HEADS;
      k.shape[2] = DEMO_HEAD_DIM;
      k.strides[0] = DEMO_HEADS * DEMO_HEAD_DIM;
      k.strides[1] = DEMO_HEAD_DIM;
      k.strides[2] = 1;
      k.device_type = KVP_DEVICE_CPU;
      v = k;
      v.data = vbuf + l * DEMO_TOKEN_BUDGET * DEMO_HEADS * DEMO_HEAD_DIM;
      if (kvp_concatenate(cache, (uint32_t)l, &k, &v, md, NULL) != KVP_OK) {
        fprintf(stderr, "kvp demo: step %d layer %" PRId64 ": %s\n", step, l, kvp_last_error_message());
        kvp_metadata_destroy(md);
        goto out;
      }
    }
    dt_s = now_s() - t0;
    concat_time += dt_s;
    total_tokens += T;
    kvp_metadata_destroy(md);
    if (!quiet)
      printf("step %3d: %d decode + %d prefill rows, %4" PRId64 " tokens, concatenate x%" PRId64 " layers %8.3f ms"
             "  %7.2f GB/s  %9.0f tokens/s\n",
             step, ndec, npre, T, layers, dt_s * 1e3, (double)(T * layers * bytes_per_token) / dt_s / 1e9,
             (double)T / dt_s);
    /* Advance; finished requests are checked, then give their pages back. */
    for (row = 0; row < nb; ++row) {
      demo_req *r = &reqs[idx[row]];
      r->computed += br[row].num_scheduled;
      if (r->computed >= r->prompt + r->gen) {
        const int64_t bad = check_request(cache, r, layers, cfg.kvdtype);
        if (bad < 0) goto out;
        mismatches += bad;
        checked_tokens += r->computed;
        r->done = r->checked = 1;
        if (!quiet)
          printf("          request %d finished (%" PRId64 " prompt + %" PRId64 " generated tokens): read-back %s\n",
                 r->id, r->prompt, r->gen, bad == 0 ? "ok" : "MISMATCH");
        while (r->num_pages > 0) free_list[nfree++] = r->pages[--r->num_pages];
      }
    }
  }
  printf("\n%d steps, %" PRId64 " tokens written to %" PRId64 " layers in %.3f ms of kvp_concatenate "
         "(%.2f GB/s, %.0f tokens/s); wall %.2f s\n",
         step, total_tokens, layers, concat_time * 1e3,
         (double)(total_tokens * layers * bytes_per_token) / concat_time / 1e9, (double)total_tokens / concat_time,
         now_s() - t_start);
  if (mismatches != 0) {
    printf("read-back check FAILED: %" PRId64 " mismatching elements\n", mismatches);
    goto out;
  }
  printf("read-back check passed: %d requests, %" PRId64 " tokens x %" PRId64 " layers x %d heads x %d lanes, "
         "keys and values, through KVP_VIEW_KEYS / KVP_VIEW_VALUES\n",
         DEMO_REQS, checked_tokens, layers, DEMO_HEADS, DEMO_HEAD_DIM);
  rc = 0;
out:
  free(free_list);
  free(kbuf);
  free(vbuf);
  kvp_cache_destroy(cache);
  return rc;
}
