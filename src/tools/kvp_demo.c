/* `kvp demo`: the README's main job. A small serving loop on the CPU:
 *   - a model-shaped cache (Llama-3.2-1B-like: 16 layers, 8 KV heads of 64 -> the v3 head_dim-64
 *     layout, bf16, page 16, a few hundred pages);
 *   - a page pool (kvp_pool) hands out the pages: every request starts with the same 96-token
 *     system prompt, so later requests reuse its pages through prefix caching; one request is
 *     a follow-up turn that repeats an earlier conversation; one asks for two samples, so its
 *     sequence is forked after the prompt and the shared tail page is copied on write;
 *   - a token budget per step: decodes first, then chunked prefill of the waiting prompts;
 *   - each step: page tables straight from the pool (kvp_pool_get_batch_request), then
 *     kvp_metadata_build() and kvp_concatenate() for every layer, timed;
 *   - the K/V written for a position is a function of the tokens up to it (as in a real model),
 *     so a reused prefix must hold exactly the bytes a recomputation would write: each finished
 *     sequence is read back through the KVP_VIEW_KEYS / KVP_VIEW_VALUES views and compared,
 *     and the pool's invariants are checked after every step; any failure exits with status 1;
 *   - at the end it prints the prefix-cache hit rate.
 * Options: --layout v2|v3, --dtype NAME (cache dtype), --layers N, --quiet. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvp_tool.h"

#define DEMO_SEQS 8 /* sequence slots of the demo: 6 requests + the second sample of one */
#define DEMO_REQS 6
#define DEMO_HEADS 8
#define DEMO_HEAD_DIM 64
#define DEMO_PAGE 16
#define DEMO_MAX_LEN 1024
#define DEMO_TOKEN_BUDGET 256
#define DEMO_SYSTEM_PROMPT 96

typedef struct demo_seq {
  int id;             /* printed name */
  int arrival;        /* step at which it arrives */
  int64_t prompt, gen; /* prompt tokens, tokens to generate */
  int samples;        /* 2: fork after the prompt */
  int live, done;
  kvp_seq_id seq;
  int64_t length;     /* tokens in the sequence (prompt + generated so far) */
  int64_t computed;   /* tokens whose K/V is in the cache */
  int64_t reused;     /* prompt tokens served from the prefix cache */
  int32_t tokens[DEMO_MAX_LEN];
  uint32_t state[DEMO_MAX_LEN]; /* running hash of tokens[0..pos]: what the "model" sees */
} demo_seq;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

/* Sets tokens[pos] and the running state that the K/V of that position depends on. */
static void demo_set_token(demo_seq *s, int64_t pos, int32_t tok) {
  s->tokens[pos] = tok;
  s->state[pos] = mix32((pos > 0 ? s->state[pos - 1] : 0x9e3779b9U) ^ (uint32_t)tok);
}

/* The value written for (prefix state, layer, head, lane, key/value): a multiple of 0.5 in
 * [-3.5, 3.5], exactly representable in every storage dtype (fp8 included). */
static float demo_value(uint32_t state, int64_t layer, int64_t h, int64_t d, int kv) {
  uint32_t x = state + (uint32_t)(layer * 17 + h * 7 + d * 3 + kv * 5);
  x ^= x >> 7;
  x = mix32(x);
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

/* Reads back every token of a sequence through the key and value views of every layer, using
 * the page-table row the pool gives for it. Returns the number of mismatching elements, or -1. */
static int64_t check_sequence(kvp_cache *cache, kvp_pool *pool, const demo_seq *s, int64_t layers, kvp_dtype dt) {
  int32_t pages[DEMO_MAX_LEN / DEMO_PAGE];
  size_t npages = 0;
  int64_t bad = 0, l, pos, h, d;
  const size_t isz = kvp_dtype_bits(dt) / 8;
  if (kvp_pool_get_page_table(pool, s->seq, pages, DEMO_MAX_LEN / DEMO_PAGE, &npages) != KVP_OK) {
    fprintf(stderr, "kvp demo: %s\n", kvp_last_error_message());
    return -1;
  }
  for (l = 0; l < layers; ++l) {
    int kv;
    for (kv = 0; kv < 2; ++kv) {
      kvp_tensor view;
      if (kvp_cache_get_view(cache, (uint32_t)l, kv ? KVP_VIEW_VALUES : KVP_VIEW_KEYS, &view) != KVP_OK) {
        fprintf(stderr, "kvp demo: %s\n", kvp_last_error_message());
        return -1;
      }
      for (pos = 0; pos < s->computed; ++pos) {
        const int64_t page = pages[pos / DEMO_PAGE], row = pos % DEMO_PAGE;
        for (h = 0; h < DEMO_HEADS; ++h)
          for (d = 0; d < DEMO_HEAD_DIM; ++d) {
            const unsigned char *p =
                (const unsigned char *)view.data +
                (size_t)(page * view.strides[0] + row * view.strides[1] + h * view.strides[2] + d * view.strides[3]) *
                    isz;
            const float want = demo_value(s->state[pos], l, h, d, kv);
            if (decode(p, dt) != want) {
              if (bad < 5)
                fprintf(stderr, "  mismatch: sequence %d pos %" PRId64 " layer %" PRId64 " %s head %" PRId64
                                " lane %" PRId64 ": %g != %g\n",
                        s->id, pos, l, kv ? "value" : "key", h, d, (double)decode(p, dt), (double)want);
              bad++;
            }
          }
      }
    }
  }
  return bad;
}

static int demo_fail(const char *what) {
  fprintf(stderr, "kvp demo: %s: %s\n", what, kvp_last_error_message());
  return 1;
}

/* The token a sequence "generates" at a position (deterministic, different per sample). */
static int32_t demo_generated_token(const demo_seq *s, int64_t pos) {
  return (int32_t)(mix32((uint32_t)(s->id * 7919 + pos * 31)) % 32000u);
}

int kvp_cmd_demo(int argc, char **argv) {
  kvp_config cfg;
  kvp_cache *cache = NULL;
  kvp_pool *pool = NULL;
  kvp_pool_options po = KVP_POOL_OPTIONS_INIT;
  kvp_pool_stats st;
  kvp_layout layout = KVP_LAYOUT_V3;
  kvp_dtype dtype = KVP_DTYPE_BF16;
  int64_t layers = 16;
  int quiet = 0, i, step, rc = 1, nseqs = DEMO_REQS;
  demo_seq *seqs = NULL;
  /* Request 5 is a follow-up turn of request 1 (its prompt = request 1's prompt plus more). */
  static const int arrival[DEMO_REQS] = {0, 1, 2, 4, 7, 12};
  static const int64_t user[DEMO_REQS] = {37, 204, 43, 417, 5, 0};
  static const int64_t gen[DEMO_REQS] = {40, 24, 48, 16, 80, 32};
  static const int samples[DEMO_REQS] = {1, 1, 2, 1, 1, 1};
  int64_t min_prompt = DEMO_MAX_LEN, max_prompt = 0;
  int64_t total_tokens = 0, bytes_per_token = 0, checked_tokens = 0, mismatches = 0;
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
  if (kvp_tool_config_for_pages(&cfg, layers, DEMO_HEADS, DEMO_HEAD_DIM, DEMO_MAX_LEN, DEMO_PAGE, dtype, layout, 320) != 0)
    return demo_fail("config");
  if (kvp_tool_print_plan(&cfg, "demo budget: 320 pages") != 0) return 1;
  if (kvp_cache_create(&cfg, NULL, &cache) != KVP_OK) return demo_fail("cache");
  po.max_sequences = DEMO_SEQS;
  if (kvp_pool_create(cache, &po, &pool) != KVP_OK) {
    rc = demo_fail("pool");
    kvp_cache_destroy(cache);
    return rc;
  }

  seqs = (demo_seq *)calloc(DEMO_SEQS, sizeof(demo_seq));
  kbuf = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)(layers * DEMO_TOKEN_BUDGET * DEMO_HEADS * DEMO_HEAD_DIM));
  vbuf = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)(layers * DEMO_TOKEN_BUDGET * DEMO_HEADS * DEMO_HEAD_DIM));
  if (seqs == NULL || kbuf == NULL || vbuf == NULL) {
    fprintf(stderr, "kvp demo: out of memory\n");
    goto out;
  }
  for (i = 0; i < DEMO_REQS; ++i) {
    demo_seq *s = &seqs[i];
    int64_t p;
    s->id = i;
    s->arrival = arrival[i];
    s->gen = gen[i];
    s->samples = samples[i];
    /* The shared system prompt, then the request's own text. */
    for (p = 0; p < DEMO_SYSTEM_PROMPT; ++p) demo_set_token(s, p, (int32_t)(1000 + p));
    if (i == 5) { /* follow-up turn: request 1's prompt and answer, then a new question */
      const demo_seq *prev = &seqs[1];
      const int64_t n = prev->prompt + prev->gen;
      for (p = DEMO_SYSTEM_PROMPT; p < n; ++p)
        demo_set_token(s, p, p < prev->prompt ? prev->tokens[p] : demo_generated_token(prev, p));
      for (; p < n + 40; ++p) demo_set_token(s, p, (int32_t)(20000 + p));
      s->prompt = p;
    } else {
      for (p = 0; p < user[i]; ++p) demo_set_token(s, DEMO_SYSTEM_PROMPT + p, (int32_t)(5000 + 977 * i + p));
      s->prompt = DEMO_SYSTEM_PROMPT + user[i];
    }
  }
  bytes_per_token = 2 * DEMO_HEADS * DEMO_HEAD_DIM * 2; /* bf16 K and V in */
  for (i = 0; i < DEMO_REQS; ++i) {
    if (seqs[i].prompt < min_prompt) min_prompt = seqs[i].prompt;
    if (seqs[i].prompt > max_prompt) max_prompt = seqs[i].prompt;
  }

  printf("\nserving %d requests that share a %d-token system prompt (prompts %" PRId64 "..%" PRId64 " tokens, chunked prefill, "
         "token budget %d per step),\n%s layout, %s cache, %" PRId64 " layers, pages from a kvp_pool with prefix caching\n",
         DEMO_REQS, DEMO_SYSTEM_PROMPT, min_prompt, max_prompt, DEMO_TOKEN_BUDGET,
         kvp_layout_name(cfg.version), kvp_dtype_name(cfg.kvdtype), layers);
  t_start = now_s();
  for (step = 0;; ++step) {
    kvp_batch_request br[DEMO_SEQS];
    int idx[DEMO_SEQS];
    int32_t order[DEMO_SEQS];
    int nb = 0, pass, ndec = 0, npre = 0, all_done = 1;
    int64_t budget = DEMO_TOKEN_BUDGET, T = 0, row, t, l;
    kvp_metadata *md = NULL;
    const int32_t *qsl;
    int64_t nq;
    double t0, dt_s;

    for (i = 0; i < nseqs; ++i) all_done &= seqs[i].done;
    if (all_done) break;
    if (step > 100000) {
      fprintf(stderr, "kvp demo: the scheduler made no progress\n");
      goto out;
    }
    /* Arrivals: the pool reuses the longest cached prefix of the prompt. */
    for (i = 0; i < DEMO_REQS; ++i) {
      demo_seq *s = &seqs[i];
      size_t reused = 0;
      kvp_status stt;
      if (s->live || s->done || s->arrival > step) continue;
      stt = kvp_pool_add_sequence(pool, s->tokens, (size_t)s->prompt, 0, 0, &s->seq, &reused);
      if (stt == KVP_ERR_OUT_OF_PAGES) continue; /* no pages now: wait */
      if (stt != KVP_OK) {
        demo_fail("add sequence");
        goto out;
      }
      s->live = 1;
      s->length = s->prompt;
      s->computed = s->reused = (int64_t)reused;
      if (!quiet)
        printf("          request %d arrives: %" PRId64 "-token prompt, %" PRId64 " tokens reused from the prefix cache\n",
               s->id, s->prompt, s->reused);
    }
    /* Schedule: decodes first (one token each), then prefill chunks, within the token budget. */
    for (pass = 0; pass < 2; ++pass)
      for (i = 0; i < nseqs; ++i) {
        demo_seq *s = &seqs[i];
        const int decoding = s->computed >= s->prompt;
        int64_t sched;
        if (!s->live || s->done || decoding != (pass == 0) || budget == 0) continue;
        if (decoding) {
          /* The token sampled from the last step's logits joins the sequence. */
          const int32_t tok = demo_generated_token(s, s->length);
          kvp_status stt = kvp_pool_append(pool, s->seq, &tok, 1, NULL);
          if (stt == KVP_ERR_OUT_OF_PAGES) continue;
          if (stt != KVP_OK) {
            demo_fail("append");
            goto out;
          }
          demo_set_token(s, s->length, tok);
          s->length++;
        }
        if (kvp_pool_get_batch_request(pool, s->seq, &br[nb]) != KVP_OK) {
          demo_fail("batch request");
          goto out;
        }
        sched = s->length - s->computed;
        if (sched > budget) sched = budget;
        br[nb].num_scheduled = sched; /* chunked prefill: part of what the pool has pending */
        idx[nb++] = i;
        budget -= sched;
        if (decoding) ndec++; else npre++;
      }
    if (nb == 0) continue;
    if (kvp_metadata_build(&cfg, br, (uint32_t)nb, NULL, order, &md) != KVP_OK ||
        kvp_metadata_get_array(md, KVP_METADATA_QUERY_START_LOC, &qsl, &nq) != KVP_OK) {
      demo_fail("metadata");
      kvp_metadata_destroy(md);
      goto out;
    }
    /* The "model": new keys/values for every layer, packed in the builder's row order. */
    T = qsl[nb];
    for (row = 0; row < nb; ++row) {
      const kvp_batch_request *b = &br[order[row]];
      const demo_seq *s = &seqs[idx[order[row]]];
      for (t = 0; t < b->num_scheduled; ++t)
        for (l = 0; l < layers; ++l) {
          int64_t h, d;
          const int64_t base = ((l * DEMO_TOKEN_BUDGET) + qsl[row] + t) * DEMO_HEADS * DEMO_HEAD_DIM;
          const uint32_t state = s->state[b->num_computed + t];
          for (h = 0; h < DEMO_HEADS; ++h)
            for (d = 0; d < DEMO_HEAD_DIM; ++d) {
              kbuf[base + h * DEMO_HEAD_DIM + d] = bf16_bits(demo_value(state, l, h, d, 0));
              vbuf[base + h * DEMO_HEAD_DIM + d] = bf16_bits(demo_value(state, l, h, d, 1));
            }
        }
    }
    t0 = now_s();
    for (l = 0; l < layers; ++l) {
      const size_t off = (size_t)l * DEMO_TOKEN_BUDGET * DEMO_HEADS * DEMO_HEAD_DIM;
      kvp_tensor k = kvp_tool_host_tensor(kbuf + off, KVP_DTYPE_BF16, T, DEMO_HEADS, DEMO_HEAD_DIM);
      kvp_tensor v = kvp_tool_host_tensor(vbuf + off, KVP_DTYPE_BF16, T, DEMO_HEADS, DEMO_HEAD_DIM);
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
    /* Advance: the written tokens are declared computed (full pages enter the prefix index). */
    for (row = 0; row < nb; ++row) {
      demo_seq *s = &seqs[idx[row]];
      s->computed += br[row].num_scheduled;
      if (kvp_pool_set_computed(pool, s->seq, (size_t)s->computed) != KVP_OK) {
        demo_fail("set computed");
        goto out;
      }
      if (s->samples == 2 && s->computed == s->prompt) {
        /* Parallel sampling: the second sample shares every page, the partial tail included;
         * the first append into that tail page by either sample copies it (copy-on-write). */
        demo_seq *c = &seqs[nseqs];
        const int id = s->id;
        kvp_seq_id child;
        if (kvp_pool_fork(pool, s->seq, 1, &child) != KVP_OK) {
          demo_fail("fork");
          goto out;
        }
        memcpy(c, s, sizeof *c);
        c->seq = child;
        c->id = 10 * id + 1;
        c->samples = s->samples = 1;
        c->reused = 0;
        nseqs++;
        if (!quiet)
          printf("          request %d forks after its prompt: sample %d shares its %" PRId64 " tokens\n", id, c->id,
                 c->computed);
      }
      if (s->length >= s->prompt + s->gen && s->computed == s->length) {
        const int64_t bad = check_sequence(cache, pool, s, layers, cfg.kvdtype);
        if (bad < 0) goto out;
        mismatches += bad;
        checked_tokens += s->computed;
        s->done = 1;
        s->live = 0;
        if (!quiet)
          printf("          sequence %d finished (%" PRId64 " prompt + %" PRId64 " generated tokens): read-back %s\n",
                 s->id, s->prompt, s->gen, bad == 0 ? "ok" : "MISMATCH");
        if (kvp_pool_free_sequence(pool, s->seq) != KVP_OK) {
          demo_fail("free sequence");
          goto out;
        }
      }
    }
    if (kvp_pool_check_invariants(pool) != KVP_OK) {
      demo_fail("pool invariants");
      goto out;
    }
  }
  st.struct_size = sizeof st;
  if (kvp_pool_get_stats(pool, &st) != KVP_OK) {
    demo_fail("stats");
    goto out;
  }
  printf("\n%d steps, %" PRId64 " tokens written to %" PRId64 " layers in %.3f ms of kvp_concatenate "
         "(%.2f GB/s, %.0f tokens/s); wall %.2f s\n",
         step, total_tokens, layers, concat_time * 1e3,
         (double)(total_tokens * layers * bytes_per_token) / concat_time / 1e9, (double)total_tokens / concat_time,
         now_s() - t_start);
  printf("prefix cache: %" PRId64 " of %" PRId64 " prompt tokens reused, hit rate %.1f%%; %" PRId64
         " pages copied on write; %" PRId64 " evictions; %" PRId64 " pages still cached for later requests\n",
         st.reused_tokens, st.prompt_tokens,
         st.prompt_tokens > 0 ? 100.0 * (double)st.reused_tokens / (double)st.prompt_tokens : 0.0, st.cow_copies,
         st.evictions, st.evictable_pages);
  if (mismatches != 0) {
    printf("read-back check FAILED: %" PRId64 " mismatching elements\n", mismatches);
    goto out;
  }
  printf("read-back check passed: %d sequences, %" PRId64 " tokens x %" PRId64 " layers x %d heads x %d lanes, "
         "keys and values, through KVP_VIEW_KEYS / KVP_VIEW_VALUES (reused prefixes hold the recomputed bytes)\n",
         nseqs, checked_tokens, layers, DEMO_HEADS, DEMO_HEAD_DIM);
  rc = 0;
out:
  free(seqs);
  free(kbuf);
  free(vbuf);
  kvp_pool_destroy(pool);
  kvp_cache_destroy(cache);
  return rc;
}
