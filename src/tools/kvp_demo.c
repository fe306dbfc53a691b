/* `kvp demo`: the README's main job. An inference loop on the CPU:
 *   - a tiny model (demo_model.c): every cache layer is one attention layer of a
 *     Llama-3.2-1B-like shape (32 query heads over 8 KV heads of 64 -> the v3 head_dim-64 layout,
 *     bf16 pages of 16 tokens) with seeded random weights, computing q/k/v for each token;
 *   - a page pool (kvp_pool) hands out the pages: every request starts with the same 96-token
 *     system prompt, so later requests reuse its pages through prefix caching; one request is
 *     a follow-up turn that repeats an earlier conversation; one asks for two samples, so its
 *     sequence is forked after the prompt and the shared tail page is copied on write;
 *   - a token budget per step: decodes first, then chunked prefill of the waiting prompts;
 *   - each step: page tables straight from the pool (kvp_pool_get_batch_request),
 *     kvp_metadata_build(), then for every layer kvp_attention(), which writes the step's new
 *     keys and values into the pages and attends every new token to its sequence, timed;
 *   - every output row of every layer is compared with a dense float64 attention over the
 *     sequence's K/V recomputed from its tokens (never read from the cache), so a page reused from
 *     the prefix cache must give what recomputation gives; each finished sequence is also read
 *     back through the KVP_VIEW_KEYS / KVP_VIEW_VALUES views and compared byte for byte; the
 *     pool's invariants are checked after every step; any failure exits with status 1;
 *   - at the end it prints the prefix-cache hit rate and the checks' results;
 *   - with storage tiers (--disk DIR, --redis URL: demo_tiers.c) the pool also has a memory tier:
 *     evicted prefix pages are written to every tier, cached ones at the end, and a second run
 *     (a restarted process, or another server on the same Redis) restores the prompts' pages from
 *     the tiers instead of computing them; the checks are the same.
 * Options: --layout v2|v3, --dtype NAME (cache dtype), --layers N, --pages N, --disk DIR,
 * --redis URL, --quiet, --save FILE. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "demo.h"
#include "kvp_tool.h"

#define DEMO_SEQS 7 /* sequence slots of the demo: 6 requests + the second sample of one */
#define DEMO_REQS 6
#define DEMO_PAGE 16
#define DEMO_PAGES 320 /* the default page budget */
#define DEMO_TOKEN_BUDGET 256
#define DEMO_SYSTEM_PROMPT 96
#define DEMO_LAST_ARRIVAL 12 /* the step at which the last request arrives */

typedef struct demo {
  demo_model model;
  demo_tiers tiers;
  kvp_config cfg;
  kvp_cache *cache;
  kvp_pool *pool;
  demo_seq *seqs;
  int nseqs, quiet;
  float *q, *k, *v, *out; /* one layer of a step: [DEMO_TOKEN_BUDGET][width] */
  int64_t tokens, rows_checked, shared_rows_checked, attention_errors, readback_tokens, readback_errors;
  double attention_s, max_err;
  /* The model's q/k/v and kvp_attention (not the checks) in steps with prefill rows, their
   * tokens, and the time in kvp_pool_add_sequence: what the tiers' report needs. */
  double prefill_s, add_s;
  int64_t prefill_tokens;
} demo;

typedef struct demo_step {
  kvp_batch_request br[DEMO_SEQS];
  int idx[DEMO_SEQS]; /* br[b] is the request of seqs[idx[b]] */
  int32_t order[DEMO_SEQS];
  int nb, ndec, npre;
  kvp_metadata *md;
  const int32_t *qsl;
  int64_t T;
} demo_step;

static int demo_fail(const char *what) {
  fprintf(stderr, "kvp demo: %s: %s\n", what, kvp_last_error_message());
  return 1;
}

/* The token a sequence "samples" at a position (deterministic, different per sample). */
static int32_t generated_token(const demo_seq *s, int64_t pos) {
  return (int32_t)(demo_mix32((uint32_t)(s->id * 7919 + pos * 31)) % 32000u);
}

static void demo_usage(FILE *f) {
  fprintf(f,
          "usage: kvp demo [options]\n"
          "\n"
          "Serves six requests that share a system prompt through a tiny model on the CPU (page pool,\n"
          "prefix caching, chunked prefill, kvp_attention) and checks every attention output and\n"
          "the read-back against a dense recomputation. Exit status 1 on any mismatch.\n"
          "\n"
          "  --layout NAME       " KVP_TOOL_LAYOUTS " (default v3)\n"
          "  --dtype NAME        cache dtype: " KVP_TOOL_DTYPES "\n"
          "                      (default bf16)\n"
          "  --layers N          model layers, 1 to 64 (default 4)\n"
          "  --pages N           the cache's pages, 40 to 4096 (default 320; fewer pages, more evictions)\n"
          "  --disk DIR          storage tiers: a memory tier, then a directory store in DIR (created\n"
          "                      if missing; kept, so a second run restores from it)\n"
          "  --redis URL         storage tiers: a memory tier, then (after --disk) a Redis store:\n"
          "                      redis://HOST:PORT or redis+cluster://HOST:PORT[,HOST:PORT...]\n"
          "  --quiet             no per-step lines\n"
          "  --save FILE         at the end, save the cache (every page) to FILE\n"
          "  --progress WHEN     progress bar of --save on stderr: " KVP_TOOL_PROGRESS " (default auto:\n"
          "                      when stderr is a terminal and the file is at least 32 MiB)\n");
}

typedef struct demo_args {
  kvp_layout layout;
  kvp_dtype dtype;
  int64_t layers, pages;
  int quiet;
  const char *save_path, *disk, *redis;
  kvp_progress_mode progress;
} demo_args;

static const kvp_tool_opt demo_opts[] = {{"--layout", "NAME"}, {"--dtype", "NAME"},   {"--layers", "N"},
                                         {"--pages", "N"},     {"--disk", "DIR"},     {"--redis", "URL"},
                                         {"--quiet", NULL},    {"--save", "FILE"},    {"--progress", "WHEN"},
                                         {NULL, NULL}};

/* One option's value into da. Returns NULL when valid, else why not. */
static const char *demo_option(demo_args *da, const kvp_tool_opt *opt, const char *v) {
  if (kvp_tool_is(opt, "--quiet")) return da->quiet = 1, NULL;
  if (kvp_tool_is(opt, "--save")) return da->save_path = v, NULL;
  if (kvp_tool_is(opt, "--disk")) return da->disk = v, NULL;
  if (kvp_tool_is(opt, "--redis")) return da->redis = v, NULL;
  if (kvp_tool_is(opt, "--pages"))
    return kvp_tool_parse_int(v, &da->pages) != 0 || da->pages < 40 || da->pages > 4096 ? "expected an integer in [40, 4096]"
                                                                                          : NULL;
  if (kvp_tool_is(opt, "--layout"))
    return kvp_layout_from_string(v, &da->layout) != KVP_OK ? "valid values are " KVP_TOOL_LAYOUTS : NULL;
  if (kvp_tool_is(opt, "--dtype")) return kvp_tool_parse_dtype(v, &da->dtype) ? "valid values are " KVP_TOOL_DTYPES : NULL;
  if (kvp_tool_is(opt, "--layers"))
    return kvp_tool_parse_int(v, &da->layers) != 0 || da->layers > 64 ? "expected an integer in [1, 64]" : NULL;
  return kvp_tool_parse_progress(v, &da->progress) != 0 ? "valid values are " KVP_TOOL_PROGRESS : NULL;
}

/* Returns -1 to go on, otherwise the exit code. */
static int parse_args(int argc, char **argv, demo_args *da) {
  kvp_tool_args a;
  const kvp_tool_opt *opt;
  const char *v, *why;
  int r;
  kvp_tool_args_init(&a, argc, argv, "kvp demo", demo_opts);
  while ((r = kvp_tool_next_arg(&a, &opt, &v)) != KVP_TOOL_ARG_END) {
    if (r == KVP_TOOL_ARG_HELP) return demo_usage(stdout), 0;
    if (r == KVP_TOOL_ARG_ERROR) return 2;
    if (r == KVP_TOOL_ARG_POSITIONAL) {
      fprintf(stderr, "kvp demo: unexpected argument '%s'\n\n", v);
      demo_usage(stderr);
      return 2;
    }
    if ((why = demo_option(da, opt, v)) != NULL) return kvp_tool_bad_value("kvp demo", opt->name, v, why);
  }
  return -1;
}

/* The six requests: a shared system prompt, then each one's own text; request 5 is a follow-up
 * turn of request 1 (its prompt = request 1's prompt and answer, then a new question). */
static int init_requests(demo *d) {
  static const int arrival[DEMO_REQS] = {0, 1, 2, 4, 7, DEMO_LAST_ARRIVAL};
  static const int64_t user[DEMO_REQS] = {37, 204, 43, 417, 5, 0};
  static const int64_t gen[DEMO_REQS] = {40, 24, 48, 16, 80, 32};
  static const int samples[DEMO_REQS] = {1, 1, 2, 1, 1, 1};
  int i;
  for (i = 0; i < DEMO_REQS; ++i) {
    demo_seq *s = &d->seqs[i];
    int64_t p;
    s->id = i;
    s->arrival = arrival[i];
    s->gen = gen[i];
    s->samples = samples[i];
    for (p = 0; p < DEMO_SYSTEM_PROMPT; ++p) demo_set_token(s, p, (int32_t)(1000 + p));
    if (i == 5) {
      const demo_seq *prev = &d->seqs[1];
      const int64_t n = prev->prompt + prev->gen;
      for (p = DEMO_SYSTEM_PROMPT; p < n; ++p)
        demo_set_token(s, p, p < prev->prompt ? prev->tokens[p] : generated_token(prev, p));
      for (; p < n + 40; ++p) demo_set_token(s, p, (int32_t)(20000 + p));
      s->prompt = p;
    } else {
      for (p = 0; p < user[i]; ++p) demo_set_token(s, DEMO_SYSTEM_PROMPT + p, (int32_t)(5000 + 977 * i + p));
      s->prompt = DEMO_SYSTEM_PROMPT + user[i];
    }
    if (demo_seq_reserve(s, d->model.layers, s->prompt + s->gen) != 0) return -1;
  }
  return 0;
}

static int demo_open(demo *d, const demo_args *da) {
  kvp_pool_options po = KVP_POOL_OPTIONS_INIT;
  const size_t qn = (size_t)DEMO_TOKEN_BUDGET * DEMO_Q_WIDTH, kvn = (size_t)DEMO_TOKEN_BUDGET * DEMO_KV_WIDTH;
  printf("%s\n\n", kvp_build_info());
  if (kvp_tool_config_for_pages(&d->cfg, da->layers, DEMO_KV_HEADS, DEMO_HEAD_DIM, DEMO_MAX_LEN, DEMO_PAGE, da->dtype,
                                da->layout, da->pages) != 0)
    return demo_fail("config");
  char note[64];
  snprintf(note, sizeof note, "demo budget: %" PRId64 " pages", da->pages);
  if (kvp_tool_print_plan(&d->cfg, note) != 0) return 1;
  if (kvp_cache_create(&d->cfg, NULL, &d->cache) != KVP_OK) return demo_fail("cache");
  po.max_sequences = DEMO_SEQS;
  if (kvp_pool_create(d->cache, &po, &d->pool) != KVP_OK) return demo_fail("pool");
  if ((da->disk != NULL || da->redis != NULL) && demo_tiers_open(&d->tiers, d->pool, da->disk, da->redis) != 0) return 1;
  d->seqs = (demo_seq *)calloc(DEMO_SEQS, sizeof(demo_seq));
  d->q = (float *)malloc(sizeof(float) * qn);
  d->out = (float *)malloc(sizeof(float) * qn);
  d->k = (float *)malloc(sizeof(float) * kvn);
  d->v = (float *)malloc(sizeof(float) * kvn);
  if (demo_model_init(&d->model, da->layers) != 0 || d->seqs == NULL || d->q == NULL || d->out == NULL || d->k == NULL ||
      d->v == NULL || init_requests(d) != 0) {
    fprintf(stderr, "kvp demo: out of memory\n");
    return 1;
  }
  d->nseqs = DEMO_REQS;
  return 0;
}

static void demo_close(demo *d) {
  int i;
  if (d->seqs != NULL)
    for (i = 0; i < DEMO_SEQS; ++i) demo_seq_free(&d->seqs[i]);
  free(d->seqs);
  free(d->q);
  free(d->k);
  free(d->v);
  free(d->out);
  demo_model_free(&d->model);
  kvp_pool_destroy(d->pool);
  demo_tiers_close(&d->tiers); /* after the pool, which drains its writes into them */
  kvp_cache_destroy(d->cache);
}

/* Arrivals: the pool reuses the longest cached prefix of the prompt; the reference recomputes
 * the whole prompt. */
static int arrive(demo *d, int step) {
  int i;
  for (i = 0; i < DEMO_REQS; ++i) {
    demo_seq *s = &d->seqs[i];
    size_t reused = 0;
    kvp_status st;
    double t0;
    if (s->live || s->done || s->arrival > step) continue;
    t0 = kvp_tool_now();
    st = kvp_pool_add_sequence(d->pool, s->tokens, (size_t)s->prompt, 0, 0, &s->seq, &reused);
    d->add_s += kvp_tool_now() - t0;
    if (st == KVP_ERR_OUT_OF_PAGES) continue; /* no pages now: wait */
    if (st != KVP_OK) return demo_fail("add sequence");
    s->live = 1;
    s->length = s->prompt;
    s->computed = s->reused = (int64_t)reused;
    s->shares_pages = reused > 0;
    demo_seq_extend(&d->model, s, s->prompt);
    if (!d->quiet)
      printf("          request %d arrives: %" PRId64 "-token prompt, %" PRId64 " tokens reused from the prefix cache%s\n",
             s->id, s->prompt, s->reused, d->tiers.count > 0 ? " or the tiers" : "");
  }
  return 0;
}

/* Schedules one sequence: a decode takes the token sampled last step; then its pending tokens,
 * within the budget, become the next request row. Returns 0 (scheduled or skipped) or 1. */
static int schedule_one(demo *d, demo_step *st, int i, int64_t *budget) {
  demo_seq *s = &d->seqs[i];
  const int decoding = s->computed >= s->prompt;
  int64_t sched;
  if (decoding) {
    const int32_t tok = generated_token(s, s->length);
    const kvp_status rc = kvp_pool_append(d->pool, s->seq, &tok, 1, NULL);
    if (rc == KVP_ERR_OUT_OF_PAGES) return 0;
    if (rc != KVP_OK) return demo_fail("append");
    demo_set_token(s, s->length, tok);
    s->length++;
    demo_seq_extend(&d->model, s, s->length);
  }
  if (kvp_pool_get_batch_request(d->pool, s->seq, &st->br[st->nb]) != KVP_OK) return demo_fail("batch request");
  sched = s->length - s->computed;
  if (sched > *budget) sched = *budget;
  st->br[st->nb].num_scheduled = sched; /* chunked prefill: part of what the pool has pending */
  st->idx[st->nb++] = i;
  *budget -= sched;
  if (decoding) st->ndec++; else st->npre++;
  return 0;
}

/* Decodes first (one token each), then prefill chunks, then the step's metadata. */
static int schedule(demo *d, demo_step *st) {
  int64_t budget = DEMO_TOKEN_BUDGET, nq;
  int pass, i;
  for (pass = 0; pass < 2; ++pass)
    for (i = 0; i < d->nseqs; ++i) {
      const demo_seq *s = &d->seqs[i];
      if (!s->live || s->done || (s->computed >= s->prompt) != (pass == 0) || budget == 0) continue;
      if (schedule_one(d, st, i, &budget) != 0) return 1;
    }
  if (st->nb == 0) return 0;
  if (kvp_metadata_build(&d->cfg, st->br, (uint32_t)st->nb, NULL, st->order, &st->md) != KVP_OK ||
      kvp_metadata_get_array(st->md, KVP_METADATA_QUERY_START_LOC, &st->qsl, &nq) != KVP_OK)
    return demo_fail("metadata");
  st->T = st->qsl[st->nb];
  return 0;
}

/* The model's q, k and v of one layer for the step's tokens, packed in the builder's row order. */
static void fill_qkv(demo *d, const demo_step *st, int64_t l) {
  int64_t row, t;
  for (row = 0; row < st->nb; ++row) {
    const kvp_batch_request *b = &st->br[st->order[row]];
    const demo_seq *s = &d->seqs[st->idx[st->order[row]]];
    for (t = 0; t < b->num_scheduled; ++t) {
      const int64_t r = st->qsl[row] + t, pos = b->num_computed + t;
      const int64_t at = (l * s->capacity + pos) * DEMO_KV_WIDTH;
      demo_query(&d->model, l, s->state[pos], d->q + r * DEMO_Q_WIDTH);
      memcpy(d->k + r * DEMO_KV_WIDTH, s->keys + at, sizeof(float) * DEMO_KV_WIDTH);
      memcpy(d->v + r * DEMO_KV_WIDTH, s->values + at, sizeof(float) * DEMO_KV_WIDTH);
    }
  }
}

/* Every layer: q/k/v, the fused write + attention (timed), and the check of every output row. */
static int run_layers(demo *d, const demo_step *st, int step, double *elapsed) {
  kvp_attention_options ao = KVP_ATTENTION_OPTIONS_INIT;
  const kvp_tensor q = kvp_tool_host_tensor(d->q, KVP_DTYPE_F32, st->T, DEMO_Q_HEADS, DEMO_HEAD_DIM);
  const kvp_tensor k = kvp_tool_host_tensor(d->k, KVP_DTYPE_F32, st->T, DEMO_KV_HEADS, DEMO_HEAD_DIM);
  const kvp_tensor v = kvp_tool_host_tensor(d->v, KVP_DTYPE_F32, st->T, DEMO_KV_HEADS, DEMO_HEAD_DIM);
  const kvp_tensor out = kvp_tool_host_tensor(d->out, KVP_DTYPE_F32, st->T, DEMO_Q_HEADS, DEMO_HEAD_DIM);
  int64_t l, row;
  ao.softmax_scale = d->model.softmax_scale;
  *elapsed = 0.0;
  for (l = 0; l < d->model.layers; ++l) {
    const double t_qkv = kvp_tool_now();
    double t0;
    fill_qkv(d, st, l);
    t0 = kvp_tool_now();
    if (kvp_attention(d->cache, (uint32_t)l, &q, &k, &v, st->md, &ao, &out, NULL) != KVP_OK) {
      fprintf(stderr, "kvp demo: step %d layer %" PRId64 ": %s\n", step, l, kvp_last_error_message());
      return 1;
    }
    *elapsed += kvp_tool_now() - t0;
    if (st->npre > 0) d->prefill_s += kvp_tool_now() - t_qkv;
    for (row = 0; row < st->nb; ++row) {
      const kvp_batch_request *b = &st->br[st->order[row]];
      const demo_seq *s = &d->seqs[st->idx[st->order[row]]];
      d->attention_errors += demo_check_rows(&d->model, s, l, d->q, d->out, st->qsl[row], b->num_computed,
                                             b->num_scheduled, &d->max_err);
      d->rows_checked += b->num_scheduled;
      if (s->shares_pages) d->shared_rows_checked += b->num_scheduled;
    }
  }
  return 0;
}

/* Parallel sampling: the second sample shares every page, the partial tail included; the first
 * append into that tail page by either sample copies it (copy-on-write). */
static int fork_sample(demo *d, demo_seq *s) {
  demo_seq *c = &d->seqs[d->nseqs];
  kvp_seq_id child;
  if (kvp_pool_fork(d->pool, s->seq, 1, &child) != KVP_OK) return demo_fail("fork");
  memcpy(c, s, sizeof *c);
  if (demo_seq_copy_reference(c, s, d->model.layers) != 0) {
    fprintf(stderr, "kvp demo: out of memory\n");
    return 1;
  }
  c->seq = child;
  c->id = 10 * s->id + 1;
  c->samples = s->samples = 1;
  c->reused = 0;
  c->shares_pages = 1;
  d->nseqs++;
  if (!d->quiet)
    printf("          request %d forks after its prompt: sample %d shares its %" PRId64 " tokens\n", s->id, c->id,
           c->computed);
  return 0;
}

static int finish(demo *d, demo_seq *s) {
  const int64_t bad = demo_check_readback(d->cache, d->pool, s, d->model.layers, DEMO_PAGE, d->cfg.kvdtype);
  if (bad < 0) return 1;
  d->readback_errors += bad;
  d->readback_tokens += s->computed;
  s->done = 1;
  s->live = 0;
  if (!d->quiet)
    printf("          sequence %d finished (%" PRId64 " prompt + %" PRId64 " generated tokens): read-back %s\n", s->id,
           s->prompt, s->gen, bad == 0 ? "ok" : "MISMATCH");
  return kvp_pool_free_sequence(d->pool, s->seq) == KVP_OK ? 0 : demo_fail("free sequence");
}

/* The written tokens are declared computed (full pages enter the prefix index). */
static int advance(demo *d, const demo_step *st) {
  int b;
  for (b = 0; b < st->nb; ++b) {
    demo_seq *s = &d->seqs[st->idx[b]];
    s->computed += st->br[b].num_scheduled;
    if (kvp_pool_set_computed(d->pool, s->seq, (size_t)s->computed) != KVP_OK) return demo_fail("set computed");
    if (s->samples == 2 && s->computed == s->prompt && fork_sample(d, s) != 0) return 1;
    if (s->length >= s->prompt + s->gen && s->computed == s->length && finish(d, s) != 0) return 1;
  }
  return kvp_pool_check_invariants(d->pool) == KVP_OK ? 0 : demo_fail("pool invariants");
}

static int all_done(const demo *d) {
  int i;
  for (i = 0; i < d->nseqs; ++i)
    if (!d->seqs[i].done) return 0;
  return 1;
}

/* One step: arrivals, schedule, every layer, advance. */
static int run_step(demo *d, int step) {
  demo_step st;
  double elapsed = 0.0;
  int rc;
  memset(&st, 0, sizeof st);
  if (arrive(d, step) != 0 || schedule(d, &st) != 0) {
    kvp_metadata_destroy(st.md);
    return 1;
  }
  if (st.nb == 0) {  // waiting for an arrival; after the last one, nothing to run means no progress
    if (step <= DEMO_LAST_ARRIVAL) return 0;
    fprintf(stderr, "kvp demo: step %d: the scheduler made no progress\n", step);
    return 1;
  }
  rc = run_layers(d, &st, step, &elapsed);
  kvp_metadata_destroy(st.md);
  if (rc != 0) return 1;
  d->attention_s += elapsed;
  d->tokens += st.T;
  if (st.npre > 0) d->prefill_tokens += st.T;
  if (!d->quiet)
    printf("step %3d: %d decode + %d prefill rows, %4" PRId64 " tokens, attention x%" PRId64 " layers %8.3f ms"
           "  %9.0f tokens/s\n",
           step, st.ndec, st.npre, st.T, d->model.layers, elapsed * 1e3, (double)st.T / elapsed);
  return advance(d, &st);
}

static int report(demo *d, int steps, double wall) {
  kvp_pool_stats st;
  st.struct_size = sizeof st;
  if (kvp_pool_get_stats(d->pool, &st) != KVP_OK) return demo_fail("stats");
  printf("\n%d steps, %" PRId64 " tokens through %" PRId64 " layers in %.3f ms of kvp_attention (%.0f tokens/s); wall %.2f s\n",
         steps, d->tokens, d->model.layers, d->attention_s * 1e3, (double)d->tokens / d->attention_s, wall);
  printf("prefix cache: %" PRId64 " of %" PRId64 " prompt tokens reused, hit rate %.1f%%; %" PRId64
         " pages copied on write; %" PRId64 " evictions; %" PRId64 " pages still cached for later requests\n",
         st.reused_tokens, st.prompt_tokens,
         st.prompt_tokens > 0 ? 100.0 * (double)st.reused_tokens / (double)st.prompt_tokens : 0.0, st.cow_copies,
         st.evictions, st.evictable_pages);
  printf("attention check %s: %" PRId64 " token rows x %" PRId64 " layers x %d heads x %d lanes against a dense float64 "
         "recomputation from the tokens (max |error| %.1e, tolerance 2e-5 + 2e-5|ref|); %" PRId64
         " of the rows attend over pages shared through the prefix cache or a fork\n",
         d->attention_errors == 0 ? "passed" : "FAILED", d->rows_checked / d->model.layers, d->model.layers,
         DEMO_Q_HEADS, DEMO_HEAD_DIM, d->max_err, d->shared_rows_checked / d->model.layers);
  printf("read-back check %s: %d sequences, %" PRId64 " tokens x %" PRId64 " layers x %d heads x %d lanes, keys and "
         "values, through KVP_VIEW_KEYS / KVP_VIEW_VALUES (reused prefixes hold the recomputed bytes)\n",
         d->readback_errors == 0 ? "passed" : "FAILED", d->nseqs, d->readback_tokens, d->model.layers, DEMO_KV_HEADS,
         DEMO_HEAD_DIM);
  if (d->tiers.count > 0 &&
      demo_tiers_report(&d->tiers, d->pool, st.reused_tokens, d->add_s,
                        d->prefill_tokens > 0 ? d->prefill_s / (double)d->prefill_tokens : 0.0) != 0)
    return 1;
  return d->attention_errors == 0 && d->readback_errors == 0 ? 0 : 1;
}

int kvp_cmd_demo(int argc, char **argv) {
  demo_args da = {KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, DEMO_PAGES, 0, NULL, NULL, NULL, KVP_PROGRESS_AUTO};
  int step, steps = 0, rc;
  double t_start;
  demo d;
  memset(&d, 0, sizeof d);
  rc = parse_args(argc, argv, &da);
  if (rc >= 0) return rc;
  d.quiet = da.quiet;
  rc = demo_open(&d, &da);
  if (rc == 0) {
    printf("\nserving %d requests that share a %d-token system prompt (chunked prefill, token budget %d per step)\n"
           "through a %" PRId64 "-layer model (%d query heads over %d KV heads of %d), %s layout, %s cache,\n"
           "pages from a kvp_pool with prefix caching, kvp_attention writing and attending each layer\n",
           DEMO_REQS, DEMO_SYSTEM_PROMPT, DEMO_TOKEN_BUDGET, da.layers, DEMO_Q_HEADS, DEMO_KV_HEADS, DEMO_HEAD_DIM,
           kvp_layout_name(d.cfg.version), kvp_dtype_name(d.cfg.kvdtype));
    t_start = kvp_tool_now();
    for (step = 0; rc == 0 && !all_done(&d); ++step) {
      const int64_t before = d.tokens;
      rc = run_step(&d, step);
      steps += d.tokens > before;
    }
    if (rc == 0) rc = report(&d, steps, kvp_tool_now() - t_start);
    if (rc == 0 && da.save_path != NULL) {
      rc = kvp_tool_save("kvp demo", d.cache, NULL, da.save_path, da.progress);
      if (rc == 0) printf("saved the cache to %s (kvp inspect / kvp load read it)\n", da.save_path);
    }
  }
  demo_close(&d);
  return rc;
}
