/* Differential libFuzzer target for kvp_concatenate. The input picks a cache (v2, v3, v3 with
 * head_dim 64; several dtypes), a layer, key/value tensors (dtypes, heads, token counts, values)
 * and metadata, mostly invalid: caller arrays wrapped by kvp_metadata_create() or requests given
 * to kvp_metadata_build(). A model written here from SPEC.md §5 and the kvp_concatenate
 * contract (ops.h) decides whether the call is valid and, if so, which slots it writes; the
 * expected pages come from the independent writer of tests/support (reference.c). The call's
 * status must match (a valid call succeeds, an invalid one returns KVP_ERR_INVALID_ARGUMENT)
 * and afterwards every byte of every layer must equal the model's: a rejected call changes
 * nothing. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kvpages.h"
#include "reference.h"

#define LAYERS 2
#define MAX_T 24
#define MAX_R 5
#define MAX_W 4
#define MAX_N 6
#define MAX_SLOTS 64

typedef struct target {
  kvp_cache *cache;
  kvp_layout layout;
  kvp_dtype dtype;
  int64_t H, D, S, P;
  kvp_test_geom g;
  size_t layer_bytes;
  unsigned char *pages[LAYERS]; /* the cache's host pages */
} target;

static const struct {
  kvp_layout layout;
  kvp_dtype dtype;
  int64_t H, D, S, P;
} kShapes[] = {
    {KVP_LAYOUT_V3, KVP_DTYPE_BF16, 2, 32, 4, 8},    {KVP_LAYOUT_V3, KVP_DTYPE_F8_E4M3FN, 3, 64, 4, 6},
    {KVP_LAYOUT_V2, KVP_DTYPE_F32, 2, 8, 4, 8},      {KVP_LAYOUT_V3, KVP_DTYPE_F16, 1, 16, 8, 5},
    {KVP_LAYOUT_V2, KVP_DTYPE_F8_E5M2, 1, 4, 4, 10},
};
#define NUM_TARGETS (sizeof kShapes / sizeof kShapes[0])
static target g_targets[NUM_TARGETS];
/* Cases by outcome, printed at exit: metadata refused at creation, calls the model rejects,
 * valid calls, and tokens those wrote. */
static long g_refused, g_invalid, g_valid, g_tokens;

static void print_counts(void) {
  fprintf(stderr, "fuzz_concatenate: %ld metadata refused, %ld calls rejected, %ld valid calls writing %ld tokens\n",
          g_refused, g_invalid, g_valid, g_tokens);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  uint64_t rng = 1;
  atexit(print_counts);
  for (size_t i = 0; i < NUM_TARGETS; ++i) {
    target *t = &g_targets[i];
    t->layout = kShapes[i].layout;
    t->dtype = kShapes[i].dtype;
    t->H = kShapes[i].H, t->D = kShapes[i].D, t->S = kShapes[i].S, t->P = kShapes[i].P;
    t->cache = kvp_fuzz_cache(LAYERS, t->H, t->D, t->S, 16 * t->S, t->P, t->dtype, t->layout);
    t->g = kvp_test_geom_of(t->layout, t->dtype, t->H, t->D, t->S, t->P);
    t->layer_bytes = (size_t)(t->P * t->S * kvp_test_token_bytes(&t->g));
    kvp_fuzz_check(t->P * t->S <= MAX_SLOTS, "slots");
    for (uint32_t l = 0; l < LAYERS; ++l) {
      kvp_tensor view;
      kvp_fuzz_check(kvp_cache_get_view(t->cache, l, KVP_VIEW_PAGES, &view) == KVP_OK, "view");
      t->pages[l] = (unsigned char *)view.data;
      for (size_t b = 0; b < t->layer_bytes; ++b) t->pages[l][b] = (unsigned char)kvp_test_rand(&rng);
    }
  }
  return 0;
}

/* ---- inputs ---------------------------------------------------------------------------- */

typedef struct inputs {
  kvp_tensor k, v;
  unsigned char kbuf[MAX_T * 3 * 64 * 4], vbuf[MAX_T * 3 * 64 * 4];
  uint32_t layer;
  int valid; /* the tensors and the layer pass the model's checks */
} inputs;

static const kvp_dtype kInputDtypes[3] = {KVP_DTYPE_F32, KVP_DTYPE_F16, KVP_DTYPE_BF16};

static void fill_tensor(kvp_tensor *t, unsigned char *buf, kvp_dtype dt, int64_t T, int64_t H, int64_t D,
                        uint64_t *rng) {
  const int sz = kvp_test_dtype_size(dt);
  for (int64_t i = 0; i < T * H * D; ++i) {
    uint32_t c = (uint32_t)kvp_test_rand(rng);
    if (kvp_test_decode(c & (sz == 4 ? 0xFFFFFFFFu : 0xFFFFu), dt) != kvp_test_decode(c & (sz == 4 ? 0xFFFFFFFFu : 0xFFFFu), dt))
      c = 0; /* no NaN inputs: the library keeps NaN payload bits the reference does not model */
    kvp_test_store_code(buf + i * sz, sz, c);
  }
  *t = (kvp_tensor){0};
  t->data = buf;
  t->dtype = dt;
  t->ndim = 3;
  t->shape[0] = T, t->shape[1] = H, t->shape[2] = D;
  t->strides[0] = H * D, t->strides[1] = D, t->strides[2] = 1;
  t->device_type = KVP_DEVICE_CPU;
}

/* Tensors and layer: mostly valid; now and then a wrong rank, dtype, head count, head dim,
 * token count or layer. */
static void make_inputs(const target *t, kvp_fuzz_reader *r, int64_t T, inputs *in) {
  uint64_t rng = kvp_fuzz_u32(r);
  const kvp_dtype kd = kInputDtypes[kvp_fuzz_range(r, 0, 2)], vd = kInputDtypes[kvp_fuzz_range(r, 0, 2)];
  fill_tensor(&in->k, in->kbuf, kd, T, t->H, t->D, &rng);
  fill_tensor(&in->v, in->vbuf, vd, T, t->H, t->D, &rng);
  in->layer = 1;
  in->valid = 1;
  const uint8_t spoil = kvp_fuzz_u8(r);
  if (spoil < 240) return;
  in->valid = 0;
  switch (spoil % 6) {
    case 0: in->k.ndim = 2; break;
    case 1: in->v.dtype = KVP_DTYPE_F8_E5M2; break;
    case 2: in->k.shape[1] = t->H + 1; break;
    case 3: in->v.shape[2] = t->D / 2; break;
    case 4: in->v.shape[0] = T > 0 ? T - 1 : 1; break;
    default: in->layer = LAYERS; break;
  }
}

/* ---- metadata -------------------------------------------------------------------------- */

typedef struct meta_arrays {
  int32_t pt[MAX_R * MAX_W], cl[MAX_R], qsl[MAX_R + 1], ns[1], rd[3];
  int32_t sm[3 * MAX_N], nkv[1];
  int32_t pages[MAX_R][MAX_W];
  kvp_batch_request req[MAX_R];
} meta_arrays;

static kvp_metadata *create_v3(const target *t, kvp_fuzz_reader *r, meta_arrays *a, kvp_status *st) {
  kvp_metadata_desc d;
  kvp_metadata_desc_init(&d, sizeof d);
  const int64_t R = kvp_fuzz_range(r, 0, MAX_R), W = kvp_fuzz_range(r, 0, MAX_W);
  for (int64_t i = 0; i < R * W; ++i) a->pt[i] = kvp_fuzz_i32_near(r, 0, (int32_t)t->P - 1);
  a->qsl[0] = kvp_fuzz_i32_near(r, 0, 1);
  for (int64_t i = 0; i < R; ++i) {
    a->qsl[i + 1] = (int32_t)((int64_t)a->qsl[i] + kvp_fuzz_i32_near(r, 0, 4));
    a->cl[i] = (int32_t)((int64_t)a->qsl[i + 1] - a->qsl[i] + kvp_fuzz_i32_near(r, 0, (int32_t)(W * t->S)));
  }
  a->ns[0] = kvp_fuzz_i32_near(r, 0, (int32_t)R);
  a->rd[0] = kvp_fuzz_i32_near(r, 0, (int32_t)R);
  a->rd[1] = (int32_t)((int64_t)a->rd[0] + kvp_fuzz_i32_near(r, 0, 2));
  a->rd[2] = kvp_fuzz_i32_near(r, 0, (int32_t)R);
  d.version = KVP_LAYOUT_V3;
  d.pages_tables = a->pt, d.num_reqs = R, d.pages_per_req = W;
  d.context_lens = a->cl, d.context_lens_len = R;
  d.query_start_loc = a->qsl, d.query_start_loc_len = R + 1;
  const uint8_t which = kvp_fuzz_u8(r);
  if (which & 1) d.num_seqs = a->ns, d.num_seqs_len = 1;
  if (which & 2) d.request_distribution = a->rd, d.request_distribution_len = 3;
  kvp_metadata *md = NULL;
  *st = kvp_metadata_create(&d, &md);
  return md;
}

static kvp_metadata *create_v2(const target *t, kvp_fuzz_reader *r, meta_arrays *a, int64_t T, kvp_status *st) {
  kvp_metadata_desc d;
  kvp_metadata_desc_init(&d, sizeof d);
  const int64_t N = kvp_fuzz_range(r, 0, MAX_N);
  for (int64_t j = 0; j < N; ++j) {
    a->sm[j] = kvp_fuzz_i32_near(r, 0, (int32_t)(t->P * t->S - 1));
    a->sm[N + j] = kvp_fuzz_i32_near(r, 0, (int32_t)(T > 0 ? T - 1 : 0));
    a->sm[2 * N + j] = kvp_fuzz_i32_near(r, 0, (int32_t)t->S);
  }
  a->nkv[0] = kvp_fuzz_i32_near(r, 0, (int32_t)N);
  d.version = KVP_LAYOUT_V2;
  d.slot_mapping = a->sm, d.num_slices = N;
  if (kvp_fuzz_u8(r) < 250) d.num_kv_update_slices = a->nkv, d.num_kv_update_slices_len = 1;
  kvp_metadata *md = NULL;
  *st = kvp_metadata_create(&d, &md);
  return md;
}

/* Requests for the builder: pages drawn from a shuffled list (distinct, so most batches are
 * valid), lengths from the input. */
static kvp_metadata *build(const target *t, kvp_fuzz_reader *r, meta_arrays *a, kvp_status *st) {
  kvp_config cfg;
  kvp_config_init(&cfg, sizeof cfg);
  kvp_fuzz_check(kvp_cache_get_config(t->cache, &cfg) == KVP_OK, "config");
  int32_t free_pages[MAX_SLOTS];
  for (int64_t p = 1; p < t->P; ++p) free_pages[p - 1] = (int32_t)p;
  const uint32_t n = (uint32_t)kvp_fuzz_range(r, 0, MAX_R);
  int64_t next = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const int64_t computed = kvp_fuzz_range(r, 0, 2 * t->S), sched = kvp_fuzz_range(r, 0, 4);
    const int64_t np = kvp_fuzz_range(r, 0, MAX_W);
    for (int64_t p = 0; p < np; ++p) {
      const int64_t j = next + kvp_fuzz_range(r, 0, 3);
      a->pages[i][p] = j < t->P - 1 ? free_pages[j] : kvp_fuzz_i32_near(r, 0, (int32_t)t->P - 1);
      if (j < t->P - 1) free_pages[j] = free_pages[next < t->P - 1 ? next : j], ++next;
    }
    a->req[i] = (kvp_batch_request){computed, sched, a->pages[i], np};
  }
  int32_t order[MAX_R];
  kvp_metadata *md = NULL;
  *st = kvp_metadata_build(&cfg, a->req, n, NULL, order, &md);
  return md;
}

/* ---- the model ------------------------------------------------------------------------- */

typedef struct write_plan {
  int64_t src[MAX_SLOTS], dst[MAX_SLOTS];
  int n;
  unsigned char used[MAX_SLOTS];
} write_plan;

/* Adds a write of input token src to slot dst; 0 when the slot is written twice. */
static int plan_write(write_plan *w, int64_t src, int64_t dst) {
  if (w->used[dst]) return 0;
  w->used[dst] = 1;
  w->src[w->n] = src;
  w->dst[w->n++] = dst;
  return 1;
}

/* v2 (SPEC §5.1, per-token semantics; a zero-length slice writes nothing and is not checked). */
static int model_v2(const target *t, const kvp_metadata_desc *d, int64_t T, write_plan *w) {
  if (d->num_kv_update_slices == NULL || d->num_kv_update_slices_len < 1) return 0;
  const int64_t n = d->num_kv_update_slices[0], N = d->num_slices, slots = t->P * t->S;
  if (n < 0 || n > N) return 0;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t dst = d->slot_mapping[j], src = d->slot_mapping[N + j], len = d->slot_mapping[2 * N + j];
    if (len < 0) return 0;
    if (len > 0 && (dst < 0 || dst + len > slots || src < 0 || src + len > T)) return 0;
    for (int64_t o = 0; o < len; ++o)
      if (!plan_write(w, src + o, dst + o)) return 0;
  }
  return 1;
}

/* v3 (SPEC §5.2-5.3 and the preconditions listed in ops.h). */
static int model_v3(const target *t, const kvp_metadata_desc *d, int64_t T, write_plan *w) {
  const int32_t *rd = d->request_distribution;
  const int64_t R = d->num_reqs, W = d->pages_per_req, S = t->S;
  int64_t n, decode = 0;
  if (rd != NULL) {
    if (!(0 <= rd[0] && rd[0] <= rd[1] && rd[1] <= rd[2] && rd[2] <= R)) return 0;
    n = rd[2], decode = rd[0];
  } else {
    if (d->num_seqs == NULL || d->num_seqs_len < 1) return 0;
    n = d->num_seqs[0];
    if (n < 0 || n > R) return 0;
  }
  if (n == 0) return 1;
  if (d->context_lens == NULL || d->query_start_loc == NULL || (W > 0 && d->pages_tables == NULL)) return 0;
  if (d->query_start_loc[0] < 0) return 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t qs = d->query_start_loc[i], qe = d->query_start_loc[i + 1], q = qe - qs, len = d->context_lens[i];
    if (q <= 0 || qe > T || (i < decode && q != 1) || len < q || (len + S - 1) / S > W) return 0;
    for (int64_t pos = len - q; pos < len; ++pos) {
      const int64_t page = d->pages_tables[i * W + pos / S];
      if (page < 0 || page >= t->P) return 0;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t qs = d->query_start_loc[i], q = d->query_start_loc[i + 1] - qs, len = d->context_lens[i];
    for (int64_t k = 0; k < q; ++k) {
      const int64_t pos = len - q + k;
      if (!plan_write(w, qs + k, d->pages_tables[i * W + pos / S] * S + pos % S)) return 0;
    }
  }
  return 1;
}

static int model_valid(const target *t, const inputs *in, const kvp_metadata_desc *d, write_plan *w) {
  if (!in->valid) return 0;
  if (d->version != t->layout || (d->page_size != 0 && d->page_size != t->S)) return 0;
  return t->layout == KVP_LAYOUT_V2 ? model_v2(t, d, in->k.shape[0], w) : model_v3(t, d, in->k.shape[0], w);
}

/* ---- the differential check ------------------------------------------------------------ */

static unsigned char g_expected[LAYERS][MAX_SLOTS * 8 * 128 * 4];

static void run_case(target *t, const inputs *in, const kvp_metadata *md) {
  kvp_metadata_desc d;
  kvp_metadata_desc_init(&d, sizeof d);
  kvp_fuzz_check(kvp_metadata_get_desc(md, &d) == KVP_OK, "kvp_metadata_get_desc");
  write_plan w;
  memset(&w, 0, sizeof w);
  const int valid = model_valid(t, in, &d, &w);
  for (uint32_t l = 0; l < LAYERS; ++l) memcpy(g_expected[l], t->pages[l], t->layer_bytes);
  if (valid)
    for (int i = 0; i < w.n; ++i)
      kvp_test_ref_write_token(g_expected[in->layer], &t->g, t->dtype, &in->k, &in->v, w.src[i], w.dst[i]);
  g_valid += valid;
  g_invalid += !valid;
  g_tokens += valid ? w.n : 0;
  const kvp_status st = kvp_concatenate(t->cache, in->layer, &in->k, &in->v, md, NULL);
  kvp_fuzz_check(st == (valid ? KVP_OK : KVP_ERR_INVALID_ARGUMENT), "kvp_concatenate returned %s, the model says %s",
                 kvp_status_name(st), valid ? "valid" : "invalid");
  for (uint32_t l = 0; l < LAYERS; ++l) {
    if (memcmp(g_expected[l], t->pages[l], t->layer_bytes) == 0) continue;
    size_t b = 0;
    while (g_expected[l][b] == t->pages[l][b]) ++b;
    kvp_fuzz_check(0, "layer %u differs from the model at byte %zu (slot %zu) after a %s call", l, b,
                   b / (size_t)kvp_test_token_bytes(&t->g), valid ? "valid" : "rejected");
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kvp_fuzz_reader r = {data, size, 0};
  static inputs in;
  static meta_arrays a;
  target *t = &g_targets[kvp_fuzz_range(&r, 0, NUM_TARGETS - 1)];
  const int64_t T = kvp_fuzz_range(&r, 0, MAX_T);
  make_inputs(t, &r, T, &in);
  memset(&a, 0, sizeof a);
  const uint8_t how = kvp_fuzz_u8(&r);
  kvp_status st = KVP_OK;
  kvp_metadata *md;
  if (how < 96)
    md = build(t, &r, &a, &st);
  else if ((how < 240) == (t->layout == KVP_LAYOUT_V3)) /* mostly the cache's version */
    md = create_v3(t, &r, &a, &st);
  else
    md = create_v2(t, &r, &a, T, &st);
  if (st != KVP_OK) {
    kvp_fuzz_check(md == NULL && (st == KVP_ERR_INVALID_ARGUMENT || st == KVP_ERR_OUT_OF_PAGES),
                   "metadata creation failed with %s", kvp_status_name(st));
    ++g_refused;
    return 0;
  }
  run_case(t, &in, md);
  kvp_fuzz_check(kvp_metadata_destroy(md) == KVP_OK, "kvp_metadata_destroy");
  return 0;
}
