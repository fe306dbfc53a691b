/* kvp_concatenate on the CPU: SPEC.md §4.4 worked batch slot by slot (v2 and v3), randomized
 * batches against an independent reference written here (every dtype pair, v2 / v3 / head_dim
 * 64, strided inputs, the last physical page), exhaustive dtype conversions, and validation
 * failures that must leave the cache byte-for-byte unchanged. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "support.h"

/* ------------------------------------------------------------------------------------------ */
/* Independent reference conversions (double arithmetic, not bit tricks).                      */

static double fmt_max(kvp_test_fmt f) {
  const int bias = (1 << (f.E - 1)) - 1;
  if (f.fn) return (2.0 - ldexp(1.0, 1 - f.M)) * ldexp(1.0, ((1 << f.E) - 1) - bias);
  return (2.0 - ldexp(1.0, -f.M)) * ldexp(1.0, ((1 << f.E) - 2) - bias);
}

static uint32_t overflow_code(kvp_test_fmt f, uint32_t sign) {
  const uint32_t s = sign << (f.E + f.M);
  if (f.fn) return s | ((1u << (f.E + f.M)) - 1u);
  return s | (((1u << f.E) - 1u) << f.M);
}

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* ------------------------------------------------------------------------------------------ */
/* Inputs (the cache geometry is kvp_test_geom: the SPEC formulas, independent of the library) */

typedef struct input {
  kvp_tensor t;
  unsigned char *buf;
  unsigned char *base; /* what malloc returned */
} input;

/* Random f32 value: wide exponent range (fp8 subnormals .. overflow), some zeros and infs. */
static float rand_f32(uint64_t *rng) {
  uint64_t r = kvp_test_rand(rng);
  uint32_t sign = (uint32_t)(r & 1u), man = (uint32_t)((r >> 1) & 0x7FFFFFu);
  int e = (int)((r >> 24) % 44) - 26; /* 2^-26 .. 2^17 */
  if (((r >> 40) & 63u) == 0) return sign ? -0.0f : 0.0f;
  if (((r >> 40) & 63u) == 1) return sign ? -INFINITY : INFINITY;
  return bits_f32((sign << 31) | ((uint32_t)(e + 127) << 23) | man);
}

/* Fills a [T, H, D] input of dtype dt with one of several stride patterns. */
static void make_input(input *in, kvp_dtype dt, int64_t T, int64_t H, int64_t D, int pattern, uint64_t *rng) {
  int64_t st, sh, sd, n, t, h, d;
  const int sz = kvp_test_dtype_size(dt);
  switch (pattern) {
    case 1: sd = 1; sh = D + 3; st = H * sh + 5; break;   /* padded rows */
    case 2: sd = 1; st = D; sh = T * D; break;             /* head-major */
    case 3: sd = 2; sh = 2 * D; st = H * sh; break;        /* every other element */
    default: sd = 1; sh = D; st = H * D; break;            /* contiguous (4: from an odd address) */
  }
  n = (T > 0 ? (T - 1) * st : 0) + (H - 1) * sh + (D - 1) * sd + 1;
  if (pattern == 2) n = H * T * D;
  in->buf = (unsigned char *)malloc((size_t)(n > 0 ? n : 1) * (size_t)sz + (pattern == 4 ? (size_t)sz : 0));
  assert_non_null(in->buf);
  if (pattern == 4) in->buf += sz; /* one element past malloc's alignment (freed through in_free) */
  for (t = 0; t < n; ++t) kvp_test_store_code(in->buf + t * sz, sz, 0xA5A5A5A5u); /* garbage between elements */
  for (t = 0; t < T; ++t)
    for (h = 0; h < H; ++h)
      for (d = 0; d < D; ++d) {
        float f = rand_f32(rng);
        uint32_t c = dt == KVP_DTYPE_F32 ? f32_bits(f) : kvp_test_encode((double)f, dt);
        if (dt != KVP_DTYPE_F32 && (c & ((1u << (kvp_test_fmt_of(dt).E + kvp_test_fmt_of(dt).M)) - 1u)) >
                                       (((1u << kvp_test_fmt_of(dt).E) - 1u) << kvp_test_fmt_of(dt).M))
          c = 0; /* keep NaN out of the random inputs (overflowed values become inf, not NaN) */
        kvp_test_store_code(in->buf + (t * st + h * sh + d * sd) * sz, sz, c);
      }
  in->t = kvp_test_tensor_strided(in->buf, dt, T, H, D, st, sh, sd, KVP_DEVICE_CPU);
  in->base = pattern == 4 ? in->buf - sz : in->buf;
}

/* ------------------------------------------------------------------------------------------ */

typedef struct fixture {
  kvp_config cfg;
  kvp_cache *cache;
  kvp_test_geom g;
  unsigned char *layer; /* layer 1's buffer (host) */
  int64_t layer_bytes;
} fixture;

static void fixture_open(fixture *fx, kvp_layout lay, kvp_dtype dt, int64_t H, int64_t D, int64_t S, int64_t P,
                         uint64_t *rng) {
  kvp_tensor pages;
  int64_t i;
  fx->cfg = kvp_test_config(2, H, D, S, P, dt, lay);
  fx->g = kvp_test_geom_of(lay, dt, H, D, S, P);
  assert_kvp_ok(kvp_cache_create(&fx->cfg, NULL, &fx->cache));
  assert_kvp_ok(kvp_cache_get_view(fx->cache, 1, KVP_VIEW_PAGES, &pages));
  fx->layer = (unsigned char *)pages.data;
  fx->layer_bytes = P * S * kvp_test_token_bytes(&fx->g);
  {
    kvp_layout_info li;
    li.struct_size = sizeof li;
    assert_kvp_ok(kvp_cache_get_layout(fx->cache, &li));
    assert_int_equal(li.layer_bytes, fx->layer_bytes); /* the SPEC geometry */
  }
  /* Pre-fill with random bytes so "nothing else changes" and "padding is zeroed" are visible. */
  if (rng != NULL)
    for (i = 0; i < fx->layer_bytes; ++i) fx->layer[i] = (unsigned char)kvp_test_rand(rng);
}

static void fixture_close(fixture *fx) { assert_kvp_ok(kvp_cache_destroy(fx->cache)); }

static unsigned char *snapshot(const fixture *fx) {
  unsigned char *s = (unsigned char *)malloc((size_t)fx->layer_bytes);
  assert_non_null(s);
  memcpy(s, fx->layer, (size_t)fx->layer_bytes);
  return s;
}

/* ------------------------------------------------------------------------------------------ */
/* SPEC §4.4 worked batch: slot by slot.                                                        */

static void worked_batch(kvp_layout lay, kvp_dtype dt) {
  /* page 4, max len 16, 8 KV heads x 128, 9 pages, as in the SPEC */
  kvp_config_options o;
  kvp_config cfg;
  kvp_cache *cache = NULL;
  kvp_metadata *md = NULL;
  kvp_tensor pages;
  int32_t p0[] = {1, 2}, p1[] = {3}, p2[] = {4, 5, 6}, p3[] = {7};
  kvp_batch_request r[4] = {{5, 1, p0, 2}, {3, 1, p1, 1}, {4, 6, p2, 3}, {0, 3, p3, 1}};
  kvp_batch_options bo;
  int32_t order[4];
  input k, v;
  uint64_t rng = 99;
  kvp_test_geom g = kvp_test_geom_of(lay, dt, 8, 128, 4, 9);
  const int64_t slot_of_token[11] = {9, 15, 20, 21, 22, 23, 24, 25, 28, 29, 30};
  int64_t slot, t, h, d;
  unsigned char *zero;

  assert_kvp_ok(kvp_config_options_init(&o, sizeof o));
  o.num_hidden_layers = 1;
  o.num_kv_heads = 8;
  o.kv_head_dim_size = 128;
  o.max_model_length = 16;
  o.page_size = 4;
  o.kvdtype = dt;
  o.version = lay;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  o.budget_bytes = 9 * kvp_test_token_bytes(&g) * 4;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 9);
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &cache));
  assert_kvp_ok(kvp_batch_options_init(&bo, sizeof bo));
  bo.max_num_reqs = 6;
  bo.max_num_tokens = 16;
  assert_kvp_ok(kvp_metadata_build(&cfg, r, 4, &bo, order, &md));
  make_input(&k, KVP_DTYPE_F32, 16, 8, 128, 0, &rng);
  make_input(&v, KVP_DTYPE_F32, 16, 8, 128, 0, &rng);
  assert_kvp_ok(kvp_concatenate(cache, 0, &k.t, &v.t, md, NULL));
  assert_kvp_ok(kvp_cache_get_view(cache, 0, KVP_VIEW_PAGES, &pages));

  /* Tokens 0..10 at the SPEC's slots; explicit raw indices of the logical page shape. */
  for (t = 0; t < 11; ++t) {
    const int64_t s = slot_of_token[t], pg = s / 4, row = s % 4;
    for (h = 0; h < 8; ++h)
      for (d = 0; d < 128; d += 17) {
        int64_t ik, iv; /* element index in the PAGES view */
        if (lay == KVP_LAYOUT_V2) {
          /* kv_pages[p, r, 2h, d] / [p, r, 2h+1, d] with shape [9,4,16,128] */
          ik = ((pg * 4 + row) * 16 + 2 * h) * 128 + d;
          iv = ((pg * 4 + row) * 16 + 2 * h + 1) * 128 + d;
        } else if (dt == KVP_DTYPE_BF16) {
          /* [p, r, h, 0, d] / [p, r, h, 1, d] with shape [9,4,8,2,128] */
          ik = (((pg * 4 + row) * 8 + h) * 2 + 0) * 128 + d;
          iv = (((pg * 4 + row) * 8 + h) * 2 + 1) * 128 + d;
        } else if (dt == KVP_DTYPE_F32) {
          /* [p, r, 2h, 0, d] / [p, r, 2h+1, 0, d] with shape [9,4,16,1,128] */
          ik = (((pg * 4 + row) * 16 + 2 * h) * 1 + 0) * 128 + d;
          iv = (((pg * 4 + row) * 16 + 2 * h + 1) * 1 + 0) * 128 + d;
        } else {
          /* fp8: [p, r, h/2, 2(h%2), d] / [.., 2(h%2)+1, d] with shape [9,4,4,4,128] */
          ik = (((pg * 4 + row) * 4 + h / 2) * 4 + 2 * (h % 2)) * 128 + d;
          iv = (((pg * 4 + row) * 4 + h / 2) * 4 + 2 * (h % 2) + 1) * 128 + d;
        }
        assert_int_equal(kvp_test_load_code((unsigned char *)pages.data + ik * g.isz, (int)g.isz),
                         kvp_test_ref_convert(kvp_test_tensor_code(&k.t, t, h, d), KVP_DTYPE_F32, dt));
        assert_int_equal(kvp_test_load_code((unsigned char *)pages.data + iv * g.isz, (int)g.isz),
                         kvp_test_ref_convert(kvp_test_tensor_code(&v.t, t, h, d), KVP_DTYPE_F32, dt));
      }
  }
  /* Every other slot is still zero. */
  zero = (unsigned char *)calloc(1, (size_t)kvp_test_token_bytes(&g));
  for (slot = 0; slot < 9 * 4; ++slot) {
    int written = 0;
    for (t = 0; t < 11; ++t) written |= slot_of_token[t] == slot;
    if (!written) assert_memory_equal((unsigned char *)pages.data + slot * kvp_test_token_bytes(&g), zero, (size_t)kvp_test_token_bytes(&g));
  }
  free(zero);
  free(k.base);
  free(v.base);
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(cache));
}

static void test_concatenate__worked_batch_v3_bf16(void **state) { (void)state; worked_batch(KVP_LAYOUT_V3, KVP_DTYPE_BF16); }
static void test_concatenate__worked_batch_v3_fp8(void **state) { (void)state; worked_batch(KVP_LAYOUT_V3, KVP_DTYPE_F8_E4M3FN); }
static void test_concatenate__worked_batch_v3_fp32(void **state) { (void)state; worked_batch(KVP_LAYOUT_V3, KVP_DTYPE_F32); }
static void test_concatenate__worked_batch_v2(void **state) { (void)state; worked_batch(KVP_LAYOUT_V2, KVP_DTYPE_BF16); }

/* ------------------------------------------------------------------------------------------ */
/* Randomized batches through the builder, every dtype pair, every layout.                     */

static const kvp_dtype kInputs[3] = {KVP_DTYPE_F32, KVP_DTYPE_F16, KVP_DTYPE_BF16};
static const kvp_dtype kStorage[5] = {KVP_DTYPE_F32, KVP_DTYPE_F16, KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN,
                                      KVP_DTYPE_F8_E5M2};

/* pattern: make_input's stride pattern for both inputs, or -1 for a random one each. */
static void random_batch_case(kvp_layout lay, kvp_dtype sd, kvp_dtype vd, kvp_dtype dd, int64_t H, int64_t D,
                              int64_t S, int pattern, uint64_t *rng) {
  const int64_t P = 40;
  fixture fx;
  kvp_batch_request r[6];
  int32_t pool[64], pages[6][16], order[6];
  int nreq = (int)kvp_test_rand_range(rng, 1, 6), i, used = 0;
  int64_t total = 0, extra = kvp_test_rand_range(rng, 0, 3), row, t;
  kvp_metadata *md = NULL;
  const int32_t *qsl;
  int64_t nq;
  input k, v;
  unsigned char *shadow;

  fixture_open(&fx, lay, dd, H, D, S, P, rng);
  /* page pool: the last physical page first, then the others shuffled */
  for (i = 0; i < P - 1; ++i) pool[i] = (int32_t)(P - 1 - i);
  for (i = P - 2; i > 1; --i) {
    int j = (int)kvp_test_rand_range(rng, 1, i);
    int32_t x = pool[i];
    pool[i] = pool[j];
    pool[j] = x;
  }
  for (i = 0; i < nreq; ++i) {
    int kind = (int)kvp_test_rand_range(rng, 0, 2), np, p;
    int64_t comp = 0, sched;
    if (kind == 0) { /* decode */
      comp = kvp_test_rand_range(rng, 1, 5 * S);
      sched = 1;
    } else if (kind == 1) { /* chunked prefill continuation */
      comp = kvp_test_rand_range(rng, 1, 3 * S);
      sched = kvp_test_rand_range(rng, 2, 2 * S + 1);
    } else { /* fresh prefill */
      sched = kvp_test_rand_range(rng, 1, 3 * S);
    }
    if (kvp_test_rand_range(rng, 0, 2) == 0) comp = comp / S * S; /* page-boundary start */
    if (kind == 0 && comp == 0) comp = S;
    np = (int)((comp + sched + S - 1) / S);
    for (p = 0; p < np; ++p) pages[i][p] = pool[used++];
    r[i].num_computed = comp;
    r[i].num_scheduled = sched;
    r[i].page_ids = pages[i];
    r[i].num_pages = np;
    total += sched;
  }
  assert_true(used <= P - 1);
  assert_kvp_ok(kvp_metadata_build(&fx.cfg, r, (uint32_t)nreq, NULL, order, &md));
  assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_QUERY_START_LOC, &qsl, &nq));
  make_input(&k, sd, total + extra, H, D, pattern >= 0 ? pattern : (int)kvp_test_rand_range(rng, 0, 3), rng);
  make_input(&v, vd, total + extra, H, D, pattern >= 0 ? pattern : (int)kvp_test_rand_range(rng, 0, 3), rng);

  /* Reference: request order[row]'s token t is tensor row qsl[row] + t and goes to position
   * num_computed + t of its own page list. */
  shadow = snapshot(&fx);
  for (row = 0; row < nreq; ++row) {
    const kvp_batch_request *x = &r[order[row]];
    for (t = 0; t < x->num_scheduled; ++t) {
      const int64_t pos = x->num_computed + t;
      kvp_test_ref_write_token(shadow, &fx.g, dd, &k.t, &v.t, qsl[row] + t, x->page_ids[pos / S] * S + pos % S);
    }
  }
  assert_kvp_ok(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL));
  if (memcmp(shadow, fx.layer, (size_t)fx.layer_bytes) != 0) {
    int64_t b;
    for (b = 0; b < fx.layer_bytes && shadow[b] == fx.layer[b]; ++b) {
    }
    fail_msg("layout %u %s/%s -> %s H=%lld D=%lld S=%lld: first difference at byte %lld (slot %lld): %02x vs %02x",
             lay, kvp_dtype_name(sd), kvp_dtype_name(vd), kvp_dtype_name(dd), (long long)H, (long long)D,
             (long long)S, (long long)b, (long long)(b / kvp_test_token_bytes(&fx.g)), shadow[b], fx.layer[b]);
  }
  free(shadow);
  free(k.base);
  free(v.base);
  assert_kvp_ok(kvp_metadata_destroy(md));
  fixture_close(&fx);
}

static void random_batches(kvp_layout lay, int h64) {
  uint64_t rng = 0xC0FFEE + (uint64_t)lay * 7 + (uint64_t)h64;
  int si, di, rep;
  for (si = 0; si < 3; ++si)
    for (di = 0; di < 5; ++di)
      for (rep = 0; rep < 3; ++rep) {
        const kvp_dtype dd = kStorage[di];
        const int64_t H = kvp_test_rand_range(&rng, 1, 3);
        const int64_t D = h64 ? 64 : (rep == 0 ? 32 : rep == 1 ? 40 : 128);
        const int64_t S = kvp_test_dtype_size(dd) == 1 ? 4 * kvp_test_rand_range(&rng, 1, 2) : 2 * kvp_test_rand_range(&rng, 1, 4);
        const kvp_dtype vd = rep == 2 ? kInputs[(si + 1) % 3] : kInputs[si]; /* key/value may differ */
        random_batch_case(lay, kInputs[si], vd, dd, H, D, S, -1, &rng);
      }
}

static void test_concatenate__random_batches_v3(void **state) { (void)state; random_batches(KVP_LAYOUT_V3, 0); }
static void test_concatenate__random_batches_v3_h64(void **state) { (void)state; random_batches(KVP_LAYOUT_V3, 1); }
static void test_concatenate__random_batches_v2(void **state) { (void)state; random_batches(KVP_LAYOUT_V2, 0); }

/* Every fixed-size row writer (same dtype, contiguous rows: one per row size and lane padding,
 * compiled for each store width; the ISA levels run this binary again) and row sizes outside that
 * table, with contiguous, gapped (head stride > D), head-major, strided (stride_d 2) and
 * misaligned (odd address) sources, decode and prefill runs mixed. */
static void test_concatenate__row_writers_every_size_and_source(void **state) {
  static const struct {
    kvp_layout lay;
    kvp_dtype dt;
    int64_t H, D; /* row bytes + lane padding bytes */
  } kCases[] = {
      {KVP_LAYOUT_V2, KVP_DTYPE_BF16, 3, 32},       /* 64 + 0 */
      {KVP_LAYOUT_V2, KVP_DTYPE_BF16, 2, 64},       /* 128 + 0 */
      {KVP_LAYOUT_V3, KVP_DTYPE_BF16, 8, 64},       /* h64: 128 + 0 at K and V of one entry */
      {KVP_LAYOUT_V3, KVP_DTYPE_BF16, 3, 64},       /* h64: 128 + 0, one padding head */
      {KVP_LAYOUT_V3, KVP_DTYPE_BF16, 8, 128},      /* 256 + 0 */
      {KVP_LAYOUT_V3, KVP_DTYPE_BF16, 1, 128},      /* 256 + 0, one head (MQA) */
      {KVP_LAYOUT_V3, KVP_DTYPE_F32, 1, 128},       /* 512 + 0 */
      {KVP_LAYOUT_V3, KVP_DTYPE_BF16, 32, 96},      /* 192 + 64 (Dst 128) */
      {KVP_LAYOUT_V3, KVP_DTYPE_F32, 2, 96},        /* 384 + 128 */
      {KVP_LAYOUT_V3, KVP_DTYPE_BF16, 1, 32},       /* 64 + 192 */
      {KVP_LAYOUT_V3, KVP_DTYPE_F32, 1, 32},        /* 128 + 384 */
      {KVP_LAYOUT_V3, KVP_DTYPE_BF16, 2, 80},       /* 160 + 96 */
      {KVP_LAYOUT_V3, KVP_DTYPE_BF16, 1, 48},       /* 96 + 160 */
      {KVP_LAYOUT_V3, KVP_DTYPE_F32, 1, 80},        /* 320 + 192 */
      {KVP_LAYOUT_V3, KVP_DTYPE_BF16, 2, 40},       /* 80 + 176: not in the table */
      {KVP_LAYOUT_V3, KVP_DTYPE_F16, 3, 200},       /* 400 + 112 (Dst 256): not in it */
      {KVP_LAYOUT_V2, KVP_DTYPE_F16, 2, 96},        /* 192 + 0: not in it */
      {KVP_LAYOUT_V2, KVP_DTYPE_F16, 1, 36},        /* 72-byte rows, 144-byte tokens: not in it */
  };
  uint64_t rng = 0x5EED;
  size_t c;
  int pattern;
  (void)state;
  for (c = 0; c < sizeof kCases / sizeof kCases[0]; ++c)
    for (pattern = 0; pattern <= 4; ++pattern)
      random_batch_case(kCases[c].lay, kCases[c].dt, kCases[c].dt, kCases[c].dt, kCases[c].H, kCases[c].D, 8, pattern,
                        &rng);
}

/* The converting writers (same dtype for key and value, contiguous whole heads) compiled for one
 * head dim each (64 as h64, 96 padded to 128, 128) and the one for any other (80), for every pair
 * converted with vector code (f32 to 16 bits and fp8, 16 bits to f32 and fp8) and a table pair, with
 * contiguous, gapped and misaligned sources (the other patterns take the per-head row converter). */
static void test_concatenate__converting_writers_every_head_dim(void **state) {
  static const kvp_dtype kPairs[][2] = {
      {KVP_DTYPE_F32, KVP_DTYPE_F16},  {KVP_DTYPE_F32, KVP_DTYPE_BF16}, {KVP_DTYPE_F32, KVP_DTYPE_F8_E4M3FN},
      {KVP_DTYPE_F32, KVP_DTYPE_F8_E5M2}, {KVP_DTYPE_F16, KVP_DTYPE_F32}, {KVP_DTYPE_BF16, KVP_DTYPE_F32},
      {KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN}, {KVP_DTYPE_BF16, KVP_DTYPE_F8_E5M2}, {KVP_DTYPE_F16, KVP_DTYPE_F8_E4M3FN},
      {KVP_DTYPE_F16, KVP_DTYPE_F8_E5M2}, {KVP_DTYPE_BF16, KVP_DTYPE_F16},
  };
  static const int64_t kDims[] = {64, 96, 128, 80};
  static const int kPatterns[] = {0, 1, 4};
  uint64_t rng = 0xD1A5;
  size_t p, d, q;
  (void)state;
  for (p = 0; p < sizeof kPairs / sizeof kPairs[0]; ++p)
    for (d = 0; d < sizeof kDims / sizeof kDims[0]; ++d)
      for (q = 0; q < sizeof kPatterns / sizeof kPatterns[0]; ++q) {
        const kvp_dtype sd = kPairs[p][0], dd = kPairs[p][1];
        const int64_t S = kvp_test_dtype_size(dd) == 1 ? 8 : 4;
        random_batch_case(KVP_LAYOUT_V3, sd, sd, dd, kvp_test_rand_range(&rng, 1, 4), kDims[d], S, kPatterns[q], &rng);
      }
}

/* A large batch (spread over the library's thread pool) still matches. */
static void test_concatenate__large_batch_matches_reference(void **state) {
  (void)state;
  uint64_t rng = 4242;
  fixture fx;
  const int64_t H = 8, D = 128, S = 16, P = 300; /* ~3.9 MB: threads, regular stores */
  kvp_batch_request r[8];
  int32_t pages[8][64], order[8];
  int32_t next = 1;
  int i, p;
  int64_t total = 0, row, t;
  kvp_metadata *md = NULL;
  const int32_t *qsl;
  int64_t nq;
  input k, v;
  unsigned char *shadow;
  fixture_open(&fx, KVP_LAYOUT_V3, KVP_DTYPE_BF16, H, D, S, P, &rng);
  for (i = 0; i < 8; ++i) {
    const int64_t comp = i < 3 ? 7 + i : 0, sched = i < 3 ? 1 : 40 + 30 * i;
    const int np = (int)((comp + sched + S - 1) / S);
    for (p = 0; p < np; ++p) pages[i][p] = next++;
    r[i].num_computed = comp;
    r[i].num_scheduled = sched;
    r[i].page_ids = pages[i];
    r[i].num_pages = np;
    total += sched;
  }
  assert_true(next <= P);
  assert_kvp_ok(kvp_metadata_build(&fx.cfg, r, 8, NULL, order, &md));
  assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_QUERY_START_LOC, &qsl, &nq));
  make_input(&k, KVP_DTYPE_BF16, total, H, D, 0, &rng);
  make_input(&v, KVP_DTYPE_F32, total, H, D, 1, &rng);
  shadow = snapshot(&fx);
  for (row = 0; row < 8; ++row) {
    const kvp_batch_request *x = &r[order[row]];
    for (t = 0; t < x->num_scheduled; ++t) {
      const int64_t pos = x->num_computed + t;
      kvp_test_ref_write_token(shadow, &fx.g, KVP_DTYPE_BF16, &k.t, &v.t, qsl[row] + t, x->page_ids[pos / S] * S + pos % S);
    }
  }
  assert_kvp_ok(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL));
  assert_memory_equal(shadow, fx.layer, (size_t)fx.layer_bytes);
  free(shadow);
  free(k.base);
  free(v.base);
  assert_kvp_ok(kvp_metadata_destroy(md));
  fixture_close(&fx);
}

/* Batches writing >= 16 MiB take the streaming-store path: same results, padding zeroed. Variants
 * 0-1 copy bf16 rows, 2-3 convert f32 rows (to f16 unpadded, to bf16 with lane padding). */
static void test_concatenate__very_large_batch_matches_reference(void **state) {
  (void)state;
  uint64_t rng = 31337;
  int variant;
  for (variant = 0; variant < 4; ++variant) {
    fixture fx;
    const int64_t H = 8, D = variant % 2 == 0 ? 128 : 96, S = 16, P = 280, T = 4200;
    const kvp_dtype in_dt = variant < 2 ? KVP_DTYPE_BF16 : KVP_DTYPE_F32;
    const kvp_dtype cache_dt = variant == 2 ? KVP_DTYPE_F16 : KVP_DTYPE_BF16;
    kvp_batch_request r[18];
    int32_t pages[18][16], order[18], pool[280];
    int i, p, used = 0;
    int64_t total = 0, row, t;
    kvp_metadata *md = NULL;
    const int32_t *qsl;
    int64_t nq;
    input k, v;
    unsigned char *shadow;
    fixture_open(&fx, KVP_LAYOUT_V3, cache_dt, H, D, S, P, &rng);
    for (i = 0; i < P - 1; ++i) pool[i] = (int32_t)(i + 1);
    for (i = P - 2; i > 0; --i) {
      int j = (int)kvp_test_rand_range(&rng, 0, i);
      int32_t x = pool[i];
      pool[i] = pool[j];
      pool[j] = x;
    }
    for (i = 0; i < 18; ++i) { /* one decode, 16 prompts of 256 (the max length), one of 103 */
      const int64_t comp = i == 0 ? 3 : 0, sched = i == 0 ? 1 : (i < 17 ? 256 : T - 1 - 16 * 256);
      const int np = (int)((comp + sched + S - 1) / S);
      for (p = 0; p < np; ++p) pages[i][p] = pool[used++];
      r[i].num_computed = comp;
      r[i].num_scheduled = sched;
      r[i].page_ids = pages[i];
      r[i].num_pages = np;
      total += sched;
    }
    assert_int_equal(total, T);
    assert_true(T * fx.g.C * fx.g.Dst * 2 >= (16 << 20));
    assert_kvp_ok(kvp_metadata_build(&fx.cfg, r, 18, NULL, order, &md));
    assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_QUERY_START_LOC, &qsl, &nq));
    make_input(&k, in_dt, total, H, D, 0, &rng);
    make_input(&v, in_dt, total, H, D, 1, &rng);
    shadow = snapshot(&fx);
    for (row = 0; row < 18; ++row) {
      const kvp_batch_request *x = &r[order[row]];
      for (t = 0; t < x->num_scheduled; ++t) {
        const int64_t pos = x->num_computed + t;
        kvp_test_ref_write_token(shadow, &fx.g, cache_dt, &k.t, &v.t, qsl[row] + t, x->page_ids[pos / S] * S + pos % S);
      }
    }
    assert_kvp_ok(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL));
    assert_memory_equal(shadow, fx.layer, (size_t)fx.layer_bytes);
    free(shadow);
    free(k.base);
    free(v.base);
    assert_kvp_ok(kvp_metadata_destroy(md));
    fixture_close(&fx);
  }
}

/* A one-head (MQA) batch of 2000 decodes at scattered pages and 32000 prefill tokens, 17 MB: large
 * enough for the thread pool and, where each thread's share exceeds the streaming threshold (the
 * L2 size, at most 8 MiB), for non-temporal stores; from an aligned and a misaligned source. */
static void test_concatenate__mqa_decode_and_prefill_large_batch(void **state) {
  uint64_t rng = 777;
  const int64_t H = 1, D = 128, S = 16, decodes = 2000, prompts = 125, prompt_len = 256;
  const int64_t P = decodes + prompts * (prompt_len / S) + 1;
  const int nreq = (int)(decodes + prompts);
  int variant;
  (void)state;
  for (variant = 0; variant < 2; ++variant) {
    fixture fx;
    kvp_batch_request *r = (kvp_batch_request *)malloc(sizeof *r * (size_t)nreq);
    int32_t *pool = (int32_t *)malloc(sizeof(int32_t) * (size_t)P), *order = (int32_t *)malloc(sizeof(int32_t) * (size_t)nreq);
    int64_t i, used = 0, total = 0, row, t;
    kvp_metadata *md = NULL;
    const int32_t *qsl;
    int64_t nq;
    input k, v;
    unsigned char *shadow;
    assert_non_null(r);
    assert_non_null(pool);
    assert_non_null(order);
    fixture_open(&fx, KVP_LAYOUT_V3, KVP_DTYPE_BF16, H, D, S, P, NULL);
    memset(fx.layer, 0x5A, (size_t)fx.layer_bytes);
    for (i = 0; i < P - 1; ++i) pool[i] = (int32_t)(i + 1);
    for (i = P - 2; i > 0; --i) {
      const int64_t j = kvp_test_rand_range(&rng, 0, i);
      const int32_t x = pool[i];
      pool[i] = pool[j];
      pool[j] = x;
    }
    for (i = 0; i < nreq; ++i) {
      const int decode = i < decodes;
      r[i].num_computed = decode ? kvp_test_rand_range(&rng, 1, S - 1) : 0;
      r[i].num_scheduled = decode ? 1 : prompt_len;
      r[i].page_ids = &pool[used];
      r[i].num_pages = decode ? 1 : prompt_len / S;
      used += r[i].num_pages;
      total += r[i].num_scheduled;
    }
    assert_true(used <= P - 1);
    assert_true(total * kvp_test_token_bytes(&fx.g) >= (16 << 20));
    assert_kvp_ok(kvp_metadata_build(&fx.cfg, r, (uint32_t)nreq, NULL, order, &md));
    assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_QUERY_START_LOC, &qsl, &nq));
    make_input(&k, KVP_DTYPE_BF16, total, H, D, variant == 0 ? 0 : 4, &rng);
    make_input(&v, KVP_DTYPE_BF16, total, H, D, variant == 0 ? 0 : 4, &rng);
    shadow = snapshot(&fx);
    for (row = 0; row < nreq; ++row) {
      const kvp_batch_request *x = &r[order[row]];
      for (t = 0; t < x->num_scheduled; ++t) {
        const int64_t pos = x->num_computed + t;
        kvp_test_ref_write_token(shadow, &fx.g, KVP_DTYPE_BF16, &k.t, &v.t, qsl[row] + t, x->page_ids[pos / S] * S + pos % S);
      }
    }
    assert_kvp_ok(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL));
    assert_memory_equal(shadow, fx.layer, (size_t)fx.layer_bytes);
    free(shadow);
    free(k.base);
    free(v.base);
    free(r);
    free(pool);
    free(order);
    assert_kvp_ok(kvp_metadata_destroy(md));
    fixture_close(&fx);
  }
}

/* Several threads write large batches into their own caches at the same time (the CPU thread
 * pool serves one call at a time; the others run on their own threads). */
typedef struct concurrent_job {
  fixture fx;
  input k, v;
  kvp_metadata *md;
  unsigned char *shadow;
  kvp_status status;
} concurrent_job;

static void *concurrent_worker(void *p) {
  concurrent_job *j = (concurrent_job *)p;
  int rep;
  j->status = KVP_OK;
  for (rep = 0; rep < 3 && j->status == KVP_OK; ++rep)
    j->status = kvp_concatenate(j->fx.cache, 1, &j->k.t, &j->v.t, j->md, NULL);
  return NULL;
}

static void test_concatenate__concurrent_calls_on_different_caches(void **state) {
  (void)state;
  enum { kJobs = 3 };
  concurrent_job jobs[kJobs];
  pthread_t th[kJobs];
  uint64_t rng = 2024;
  int n;
  for (n = 0; n < kJobs; ++n) {
    concurrent_job *j = &jobs[n];
    const int64_t H = 8, D = 128, S = 16, P = 300;
    kvp_batch_request r[6];
    int32_t pages[6][16], order[6];
    int32_t next = 1;
    int i, p;
    int64_t total = 0, row, t;
    const int32_t *qsl;
    int64_t nq;
    fixture_open(&j->fx, KVP_LAYOUT_V3, n == 1 ? KVP_DTYPE_F16 : KVP_DTYPE_BF16, H, D, S, P, &rng);
    for (i = 0; i < 6; ++i) {
      const int64_t sched = 150 + 20 * i + n;
      const int np = (int)((sched + S - 1) / S);
      for (p = 0; p < np; ++p) pages[i][p] = next++;
      r[i].num_computed = 0;
      r[i].num_scheduled = sched;
      r[i].page_ids = pages[i];
      r[i].num_pages = np;
      total += sched;
    }
    assert_kvp_ok(kvp_metadata_build(&j->fx.cfg, r, 6, NULL, order, &j->md));
    assert_kvp_ok(kvp_metadata_get_array(j->md, KVP_METADATA_QUERY_START_LOC, &qsl, &nq));
    make_input(&j->k, KVP_DTYPE_BF16, total, H, D, 0, &rng);
    make_input(&j->v, KVP_DTYPE_BF16, total, H, D, 0, &rng);
    j->shadow = snapshot(&j->fx);
    for (row = 0; row < 6; ++row) {
      const kvp_batch_request *x = &r[order[row]];
      for (t = 0; t < x->num_scheduled; ++t)
        kvp_test_ref_write_token(j->shadow, &j->fx.g, n == 1 ? KVP_DTYPE_F16 : KVP_DTYPE_BF16, &j->k.t, &j->v.t, qsl[row] + t,
                        x->page_ids[t / S] * S + t % S);
    }
  }
  for (n = 0; n < kJobs; ++n) assert_int_equal(pthread_create(&th[n], NULL, concurrent_worker, &jobs[n]), 0);
  for (n = 0; n < kJobs; ++n) assert_int_equal(pthread_join(th[n], NULL), 0);
  for (n = 0; n < kJobs; ++n) {
    concurrent_job *j = &jobs[n];
    assert_int_equal(j->status, KVP_OK);
    assert_memory_equal(j->shadow, j->fx.layer, (size_t)j->fx.layer_bytes);
    free(j->shadow);
    free(j->k.base);
    free(j->v.base);
    assert_kvp_ok(kvp_metadata_destroy(j->md));
    fixture_close(&j->fx);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* v2 per-token semantics with hand-made slices (SPEC §5.1 corrected form).                    */


static void test_concatenate__v2_slices_are_per_token(void **state) {
  (void)state;
  uint64_t rng = 77;
  fixture fx;
  const int64_t H = 2, D = 16, S = 4, P = 6;
  /* 4 columns, 3 valid: (a) starts mid last page, (b) longer than a page and crossing pages,
   * (c) source not at the running sum; column 3 is beyond n and ignored. */
  int32_t sm[12] = {(int32_t)((P - 1) * S + 1), 2 * S + 2, 1, 0,
                    0, 9, 3, 0,
                    3, 6, 2, 4};
  int32_t n = 3;
  kvp_metadata *md = kvp_test_v2_metadata(sm, 4, &n);
  input k, v;
  unsigned char *shadow;
  int j;
  int64_t o;
  fixture_open(&fx, KVP_LAYOUT_V2, KVP_DTYPE_F16, H, D, S, P, &rng);
  make_input(&k, KVP_DTYPE_F32, 16, H, D, 0, &rng);
  make_input(&v, KVP_DTYPE_BF16, 16, H, D, 2, &rng);
  shadow = snapshot(&fx);
  for (j = 0; j < 3; ++j)
    for (o = 0; o < sm[8 + j]; ++o) kvp_test_ref_write_token(shadow, &fx.g, KVP_DTYPE_F16, &k.t, &v.t, sm[4 + j] + o, sm[j] + o);
  assert_kvp_ok(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL));
  assert_memory_equal(shadow, fx.layer, (size_t)fx.layer_bytes);
  /* zero-length slices are no-ops even with odd coordinates */
  sm[0] = 5;
  sm[4] = 1000;
  sm[8] = 0;
  n = 1;
  assert_kvp_ok(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL));
  assert_memory_equal(shadow, fx.layer, (size_t)fx.layer_bytes);
  free(shadow);
  free(k.base);
  free(v.base);
  assert_kvp_ok(kvp_metadata_destroy(md));
  fixture_close(&fx);
}

/* ------------------------------------------------------------------------------------------ */
/* Conversions, exhaustively, through the public API.                                           */

/* Encodes n values of dtype sd (codes) into dtype dd through a v2 cache: K of slot s holds
 * values [s*D, (s+1)*D), V holds the next chunk. */
static void lib_convert(const uint32_t *in, int64_t n, kvp_dtype sd, kvp_dtype dd, int strided, uint32_t *out) {
  const int64_t D = 256, S = 16, P = 17, slots = S * P;
  kvp_config cfg = kvp_test_config(1, 1, D, S, P, dd, KVP_LAYOUT_V2);
  kvp_cache *cache = NULL;
  kvp_tensor pages, kt, vt;
  const int ssz = kvp_test_dtype_size(sd), dsz = kvp_test_dtype_size(dd);
  int64_t done = 0;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &cache));
  assert_kvp_ok(kvp_cache_get_view(cache, 0, KVP_VIEW_PAGES, &pages));
  while (done < n) {
    int64_t T = (n - done + 2 * D - 1) / (2 * D), i, s;
    unsigned char *buf;
    int32_t sm[3];
    int32_t cnt = 1;
    kvp_metadata *md;
    const int64_t step = strided ? 2 : 1;
    if (T > slots) T = slots;
    buf = (unsigned char *)calloc((size_t)(2 * T * D * step), (size_t)ssz);
    for (i = 0; i < 2 * T * D && done + i < n; ++i) kvp_test_store_code(buf + i * step * ssz, ssz, in[done + i]);
    kt = kvp_test_tensor_strided(buf, sd, T, 1, D, D * step, D * step, step, KVP_DEVICE_CPU);
    vt = kt;
    vt.data = buf + T * D * step * ssz;
    sm[0] = 0;
    sm[1] = 0;
    sm[2] = (int32_t)T;
    md = kvp_test_v2_metadata(sm, 1, &cnt);
    assert_kvp_ok(kvp_concatenate(cache, 0, &kt, &vt, md, NULL));
    assert_kvp_ok(kvp_metadata_destroy(md));
    for (s = 0; s < T; ++s)
      for (i = 0; i < D; ++i) {
        const int64_t ik = s * D + i, iv = T * D + s * D + i;
        if (done + ik < n) out[done + ik] = kvp_test_load_code((unsigned char *)pages.data + ((s * 2 + 0) * D + i) * dsz, dsz);
        if (done + iv < n) out[done + iv] = kvp_test_load_code((unsigned char *)pages.data + ((s * 2 + 1) * D + i) * dsz, dsz);
      }
    done += 2 * T * D;
    free(buf);
  }
  assert_kvp_ok(kvp_cache_destroy(cache));
}

static int is_nan_code(uint32_t c, kvp_dtype d) {
  if (d == KVP_DTYPE_F32) return isnan(bits_f32(c));
  return isnan(kvp_test_decode(c, d));
}

static uint32_t sign_of(uint32_t c, kvp_dtype d) { return (c >> (kvp_test_dtype_size(d) * 8 - 1)) & 1u; }

/* Every 16-bit pattern of f16 / bf16 into every storage dtype. */
static void all_16bit_patterns(kvp_dtype sd) {
  uint32_t *in = (uint32_t *)malloc(65536 * sizeof(uint32_t));
  uint32_t *out = (uint32_t *)malloc(65536 * sizeof(uint32_t));
  int di, strided;
  uint32_t c;
  for (c = 0; c < 65536; ++c) in[c] = c;
  for (di = 0; di < 5; ++di)
    for (strided = 0; strided < 2; ++strided) {
      const kvp_dtype dd = kStorage[di];
      lib_convert(in, 65536, sd, dd, strided, out);
      for (c = 0; c < 65536; ++c) {
        if (is_nan_code(c, sd) && dd != sd) {
          /* NaN stays NaN with its sign */
          if (!is_nan_code(out[c], dd) || sign_of(out[c], dd) != sign_of(c, sd))
            fail_msg("%s NaN %04x -> %s gave %x", kvp_dtype_name(sd), c, kvp_dtype_name(dd), out[c]);
          continue;
        }
        if (out[c] != kvp_test_ref_convert(c, sd, dd))
          fail_msg("%s %04x -> %s: got %x, expected %x", kvp_dtype_name(sd), c, kvp_dtype_name(dd), out[c],
                   kvp_test_ref_convert(c, sd, dd));
      }
    }
  /* f32 -> back: decoded values re-encode to the same pattern (NaN: NaN) */
  for (c = 0; c < 65536; ++c) in[c] = f32_bits((float)kvp_test_decode(c, sd));
  lib_convert(in, 65536, KVP_DTYPE_F32, sd, 0, out);
  for (c = 0; c < 65536; ++c) {
    if (is_nan_code(c, sd)) {
      assert_true(is_nan_code(out[c], sd));
      continue;
    }
    if (out[c] != c) fail_msg("%s round trip %04x -> %x", kvp_dtype_name(sd), c, out[c]);
  }
  free(in);
  free(out);
}

static void test_concatenate__all_f16_patterns(void **state) { (void)state; all_16bit_patterns(KVP_DTYPE_F16); }
static void test_concatenate__all_bf16_patterns(void **state) { (void)state; all_16bit_patterns(KVP_DTYPE_BF16); }

static void test_concatenate__all_fp8_patterns_round_trip(void **state) {
  (void)state;
  const kvp_dtype f8[2] = {KVP_DTYPE_F8_E4M3FN, KVP_DTYPE_F8_E5M2};
  uint32_t in[256], out[256], c;
  int i;
  for (i = 0; i < 2; ++i) {
    for (c = 0; c < 256; ++c) in[c] = f32_bits((float)kvp_test_decode(c, f8[i]));
    lib_convert(in, 256, KVP_DTYPE_F32, f8[i], 0, out);
    for (c = 0; c < 256; ++c) {
      if (is_nan_code(c, f8[i])) {
        assert_true(is_nan_code(out[c], f8[i]));
        assert_int_equal(sign_of(out[c], f8[i]), sign_of(c, f8[i]));
      } else if (out[c] != c) {
        fail_msg("%s round trip %02x -> %02x", kvp_dtype_name(f8[i]), c, out[c]);
      }
    }
  }
}

/* Ties between neighbouring codes round to the even code; just above / below round away /
 * toward; beyond the largest finite value: inf (f16, bf16, e5m2) or NaN (e4m3fn). */
static void test_concatenate__rounding_ties_and_overflow(void **state) {
  (void)state;
  const kvp_dtype targets[4] = {KVP_DTYPE_F16, KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN, KVP_DTYPE_F8_E5M2};
  int ti;
  for (ti = 0; ti < 4; ++ti) {
    const kvp_dtype dd = targets[ti];
    const kvp_test_fmt f = kvp_test_fmt_of(dd);
    const uint32_t nfinite = f.fn ? ((1u << (f.E + f.M)) - 1u) : (((1u << f.E) - 1u) << f.M); /* positive finite codes */
    const int64_t n = 3 * (int64_t)nfinite * 2;
    uint32_t *in = (uint32_t *)malloc((size_t)n * sizeof(uint32_t));
    uint32_t *out = (uint32_t *)malloc((size_t)n * sizeof(uint32_t));
    uint32_t c;
    int64_t i = 0;
    for (c = 0; c < nfinite; ++c) {
      /* midpoint between c and c+1 (c+1 may be inf or the NaN code: use the ideal next value) */
      const double lo = kvp_test_decode(c, dd);
      const double hi = c + 1 < nfinite ? kvp_test_decode(c + 1, dd) : fmt_max(f) + (fmt_max(f) - kvp_test_decode(c - 1, dd));
      const float mid = (float)((lo + hi) / 2);
      int sgn;
      assert_true((double)mid == (lo + hi) / 2); /* exact in f32 */
      for (sgn = 0; sgn < 2; ++sgn) {
        const float s = sgn ? -1.0f : 1.0f;
        in[i++] = f32_bits(s * mid);
        in[i++] = f32_bits(s * nextafterf(mid, 0.0f));
        in[i++] = f32_bits(s * nextafterf(mid, INFINITY));
      }
    }
    lib_convert(in, n, KVP_DTYPE_F32, dd, 0, out);
    for (i = 0, c = 0; c < nfinite; ++c) {
      int sgn;
      for (sgn = 0; sgn < 2; ++sgn) {
        const uint32_t sbit = (uint32_t)sgn << (f.E + f.M);
        uint32_t even = (c & 1u) ? c + 1 : c, up = c + 1;
        if (even >= nfinite) even = overflow_code(f, 0);
        if (up >= nfinite) up = overflow_code(f, 0);
        if (out[i] != (sbit | even))
          fail_msg("%s tie above code %x: got %x, expected %x", kvp_dtype_name(dd), c, out[i], sbit | even);
        if (out[i + 1] != (sbit | c)) fail_msg("%s below tie of %x: got %x", kvp_dtype_name(dd), c, out[i + 1]);
        if (out[i + 2] != (sbit | up)) fail_msg("%s above tie of %x: got %x", kvp_dtype_name(dd), c, out[i + 2]);
        i += 3;
      }
    }
    free(in);
    free(out);
  }
  /* Spot values of the documented overflow behaviour. */
  {
    const float vals[8] = {448.0f, 464.0f, 465.0f, 480.0f, 57344.0f, 61439.0f, 61440.0f, INFINITY};
    uint32_t in8[8], e4[8], e5[8], h[8];
    int j;
    for (j = 0; j < 8; ++j) in8[j] = f32_bits(vals[j]);
    lib_convert(in8, 8, KVP_DTYPE_F32, KVP_DTYPE_F8_E4M3FN, 0, e4);
    lib_convert(in8, 8, KVP_DTYPE_F32, KVP_DTYPE_F8_E5M2, 0, e5);
    lib_convert(in8, 8, KVP_DTYPE_F32, KVP_DTYPE_F16, 0, h);
    assert_int_equal(e4[0], 0x7E); /* 448 max */
    assert_int_equal(e4[1], 0x7E); /* tie -> even (448) */
    assert_int_equal(e4[2], 0x7F); /* NaN, no saturation */
    assert_int_equal(e4[3], 0x7F);
    assert_int_equal(e4[7], 0x7F); /* inf -> NaN */
    assert_int_equal(e5[4], 0x7B); /* 57344 max */
    assert_int_equal(e5[5], 0x7B);
    assert_int_equal(e5[6], 0x7C); /* tie -> even = inf */
    assert_int_equal(e5[7], 0x7C);
    assert_int_equal(h[6], 0x7B80);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Validation: every failure leaves the cache byte-for-byte unchanged.                          */

#define EXPECT_UNCHANGED(call, substr)                                   \
  do {                                                                   \
    assert_kvp_status((call), KVP_ERR_INVALID_ARGUMENT, (substr));       \
    assert_memory_equal(before, fx.layer, (size_t)fx.layer_bytes);       \
  } while (0)

static kvp_metadata *v3_meta(int32_t *pt, int64_t R, int64_t W, int32_t *cl, int32_t *qsl, int32_t *rd) {
  kvp_metadata_desc d;
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
  d.pages_tables = pt;
  d.num_reqs = R;
  d.pages_per_req = W;
  d.context_lens = cl;
  d.context_lens_len = R;
  d.query_start_loc = qsl;
  d.query_start_loc_len = R + 1;
  d.request_distribution = rd;
  d.request_distribution_len = rd ? 3 : 0;
  if (rd == NULL) {
    static int32_t ns[1];
    ns[0] = (int32_t)R;
    d.num_seqs = ns;
    d.num_seqs_len = 1;
  }
  assert_kvp_ok(kvp_metadata_create(&d, &md));
  return md;
}

static void test_concatenate__v3_validation_leaves_cache_unchanged(void **state) {
  (void)state;
  uint64_t rng = 5;
  fixture fx;
  const int64_t H = 2, D = 64, S = 4, P = 8;
  /* 3 requests: decode (ctx 6), prefill of 5 (ctx 5), prefill of 3 (ctx 7): 9 tokens */
  int32_t pt[9], cl[3], qsl[4], rd[3];
  kvp_metadata *md;
  input k, v;
  unsigned char *before;
  fixture_open(&fx, KVP_LAYOUT_V3, KVP_DTYPE_BF16, H, D, S, P, &rng);
  make_input(&k, KVP_DTYPE_F32, 9, H, D, 0, &rng);
  make_input(&v, KVP_DTYPE_F32, 9, H, D, 0, &rng);
  before = snapshot(&fx);
#define RESET()                                                                                 \
  do {                                                                                          \
    const int32_t pt0[9] = {1, 2, 0, 3, 4, 0, 5, 7, 0}, cl0[3] = {6, 5, 7}, qsl0[4] = {0, 1, 6, 9}, \
                  rd0[3] = {1, 3, 3};                                                           \
    memcpy(pt, pt0, sizeof pt);                                                                 \
    memcpy(cl, cl0, sizeof cl);                                                                 \
    memcpy(qsl, qsl0, sizeof qsl);                                                              \
    memcpy(rd, rd0, sizeof rd);                                                                 \
  } while (0)
  RESET();
  md = v3_meta(pt, 3, 3, cl, qsl, rd);
  /* The valid batch first proves the setup; snapshot after it. */
  assert_kvp_ok(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL));
  free(before);
  before = snapshot(&fx);
  /* the last request's page is out of range: nothing of the first two is written either */
  pt[7] = (int32_t)P;
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "request 2: pages_tables[2][1] = 8");
  RESET();
  pt[7] = -1;
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "= -1 is out of range");
  RESET();
  cl[2] = 2; /* context shorter than the query */
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "request 2: context_len 2");
  RESET();
  cl[2] = 13; /* needs 4 pages, rows have 3 */
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "pages_per_req is 3");
  RESET();
  qsl[3] = 10; /* beyond the 9 tokens */
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "exceeds the 9 input tokens");
  RESET();
  qsl[2] = 1; /* empty query */
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "request 1: query length 0");
  RESET();
  qsl[0] = -1;
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "query_start_loc[0] = -1");
  RESET();
  rd[0] = 2; /* request 1 is not a decode */
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "request 1: a decode row");
  RESET();
  rd[2] = 4;
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "request_distribution [1, 3, 4]");
  RESET();
  rd[1] = 0;
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "request_distribution [1, 0, 3]");
  RESET();
  pt[6] = 3; /* request 2 writes into request 1's page 3 at rows 0..1 (positions 4, 5 -> row 0..) */
  pt[3] = 3;
  pt[4] = 3;
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "must not overlap");
  RESET();
  /* tensors */
  {
    kvp_tensor bad = k.t;
    bad.shape[1] = 3;
    EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &bad, &v.t, md, NULL), "key has 3 heads");
    bad = k.t;
    bad.shape[2] = 32;
    EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &bad, md, NULL), "value has head_dim 32");
    bad = k.t;
    bad.ndim = 4;
    EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &bad, &v.t, md, NULL), "rank 4");
    bad = k.t;
    bad.dtype = KVP_DTYPE_F8_E5M2;
    EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &bad, &v.t, md, NULL), "not an input dtype");
    bad = k.t;
    bad.shape[0] = 8;
    EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &bad, &v.t, md, NULL), "key has 8 tokens but value has 9");
    bad = k.t;
    bad.device_type = KVP_DEVICE_CUDA;
    EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &bad, &v.t, md, NULL), "device type");
    bad = k.t;
    bad.data = NULL;
    EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &bad, &v.t, md, NULL), "key.data is NULL");
    bad = k.t;
    bad.strides[0] = (int64_t)1 << 61; /* 8 tokens x 2^61 elements overflow 64-bit offsets */
    EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &bad, &v.t, md, NULL), "overflow 64-bit offsets");
    bad = k.t;
    bad.strides[2] = INT64_MIN;
    EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &bad, md, NULL), "value strides");
    /* a metadata handle is not a cache */
    assert_kvp_status(kvp_concatenate((kvp_cache *)(void *)md, 1, &k.t, &v.t, md, NULL), KVP_ERR_INVALID_HANDLE, "");
    assert_kvp_status(kvp_concatenate(fx.cache, 1, &k.t, &v.t, (const kvp_metadata *)(void *)fx.cache, NULL),
                      KVP_ERR_INVALID_HANDLE, "");
    EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, NULL, &v.t, md, NULL), "key");
    EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, NULL, md, NULL), "value");
    EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 2, &k.t, &v.t, md, NULL), "layer 2");
    assert_kvp_status(kvp_concatenate(fx.cache, 1, &k.t, &v.t, NULL, NULL), KVP_ERR_INVALID_HANDLE, "");
    assert_kvp_status(kvp_concatenate(NULL, 1, &k.t, &v.t, md, NULL), KVP_ERR_INVALID_HANDLE, "");
    assert_memory_equal(before, fx.layer, (size_t)fx.layer_bytes);
  }
  /* The same metadata without a distribution uses num_seqs. */
  assert_kvp_ok(kvp_metadata_destroy(md));
  md = v3_meta(pt, 3, 3, cl, qsl, NULL);
  assert_kvp_ok(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL));
  assert_memory_equal(before, fx.layer, (size_t)fx.layer_bytes); /* same data written again */
#undef RESET
  free(before);
  free(k.base);
  free(v.base);
  assert_kvp_ok(kvp_metadata_destroy(md));
  fixture_close(&fx);
}

static void test_concatenate__v2_validation_leaves_cache_unchanged(void **state) {
  (void)state;
  uint64_t rng = 6;
  fixture fx;
  const int64_t H = 1, D = 8, S = 4, P = 5;
  int32_t sm[9], n;
  kvp_metadata *md;
  input k, v;
  unsigned char *before;
  fixture_open(&fx, KVP_LAYOUT_V2, KVP_DTYPE_F32, H, D, S, P, &rng);
  make_input(&k, KVP_DTYPE_F16, 6, H, D, 0, &rng);
  make_input(&v, KVP_DTYPE_F16, 6, H, D, 0, &rng);
#define RESET()                                                          \
  do {                                                                   \
    const int32_t sm0[9] = {4, 9, 17, 0, 1, 4, 1, 3, 2};                 \
    memcpy(sm, sm0, sizeof sm);                                          \
    n = 3;                                                               \
  } while (0)
  RESET();
  md = kvp_test_v2_metadata(sm, 3, &n);
  assert_kvp_ok(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL));
  before = snapshot(&fx);
  sm[2] = 19; /* slots 19, 20: beyond 20 slots */
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "slice 2: destination slots [19, 21)");
  RESET();
  sm[2] = -1;
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "slice 2");
  RESET();
  sm[5] = 5; /* source tokens 5, 6 of 6 */
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "slice 2: source tokens [5, 7)");
  RESET();
  sm[4] = -2;
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "slice 1: source");
  RESET();
  sm[7] = -3;
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "slice 1: length -3 is negative");
  RESET();
  n = 4;
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "num_kv_update_slices 4");
  RESET();
  n = -1;
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "num_kv_update_slices -1");
  RESET();
  sm[1] = 3; /* slots 3..5 overlap slot 4 of slice 0 */
  EXPECT_UNCHANGED(kvp_concatenate(fx.cache, 1, &k.t, &v.t, md, NULL), "target slot 4");
  RESET();
#undef RESET
  free(before);
  free(k.base);
  free(v.base);
  assert_kvp_ok(kvp_metadata_destroy(md));
  fixture_close(&fx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_concatenate__worked_batch_v3_bf16),
      cmocka_unit_test(test_concatenate__worked_batch_v3_fp8),
      cmocka_unit_test(test_concatenate__worked_batch_v3_fp32),
      cmocka_unit_test(test_concatenate__worked_batch_v2),
      cmocka_unit_test(test_concatenate__random_batches_v3),
      cmocka_unit_test(test_concatenate__random_batches_v3_h64),
      cmocka_unit_test(test_concatenate__random_batches_v2),
      cmocka_unit_test(test_concatenate__row_writers_every_size_and_source),
      cmocka_unit_test(test_concatenate__converting_writers_every_head_dim),
      cmocka_unit_test(test_concatenate__mqa_decode_and_prefill_large_batch),
      cmocka_unit_test(test_concatenate__large_batch_matches_reference),
      cmocka_unit_test(test_concatenate__very_large_batch_matches_reference),
      cmocka_unit_test(test_concatenate__concurrent_calls_on_different_caches),
      cmocka_unit_test(test_concatenate__v2_slices_are_per_token),
      cmocka_unit_test(test_concatenate__all_f16_patterns),
      cmocka_unit_test(test_concatenate__all_bf16_patterns),
      cmocka_unit_test(test_concatenate__all_fp8_patterns_round_trip),
      cmocka_unit_test(test_concatenate__rounding_ties_and_overflow),
      cmocka_unit_test(test_concatenate__v3_validation_leaves_cache_unchanged),
      cmocka_unit_test(test_concatenate__v2_validation_leaves_cache_unchanged),
  };
  return cmocka_run_group_tests_name("concatenate", tests, NULL, NULL);
}
