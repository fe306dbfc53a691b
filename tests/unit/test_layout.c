/* Layout tests (SPEC.md §3): write known bytes at logical (layer, page, row, head, K/V, dim)
 * positions through the byte-offset rules of SPEC.md §3 -- computed here, independently, into the
 * KVP_VIEW_PAGES data pointer -- and read them back through KVP_VIEW_KEYS / KVP_VIEW_VALUES using
 * the shapes and strides those views report. Also checks the FLAT view and the reference-literal
 * even/odd key/value views (SPEC.md §3.4), the zero padding, and the view descriptors.
 *
 * Offsets (elements), S = page_size, H = KV heads, D = head dim, pack = 32 / bits:
 *   v2:          off = ((p*S + s)*2H + (2h + kv))*D + d
 *   v3 generic:  c = 2h + kv, Cst = align(2H, pack), G = Cst/pack, Dst = align(D, 128),
 *                off = (((p*S + s)*G + c/pack)*pack + c%pack)*Dst + d
 *   v3 h64:      Cst = align(H, pack), G = Cst/pack, lanes 128,
 *                off = (((p*S + s)*G + h/pack)*pack + h%pack)*128 + kv*64 + d */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct geom {
  int h64, v3;
  int64_t L, P, S, H, D, pack, cst, groups, dst, it;
} geom;

static int64_t align_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

static geom geom_of(int64_t L, int64_t P, int64_t S, int64_t H, int64_t D, kvp_dtype dt, kvp_layout lay) {
  geom g;
  memset(&g, 0, sizeof g);
  g.v3 = lay != KVP_LAYOUT_V2;
  g.L = L; g.P = P; g.S = S; g.H = H; g.D = D;
  g.it = kvp_dtype_bits(dt) / 8;
  g.pack = 4 / g.it;
  if (!g.v3) {
    g.cst = 2 * H;
    g.groups = 2 * H;
    g.dst = D;
  } else if (D == 64) {
    g.h64 = 1;
    g.cst = align_up(H, g.pack);
    g.groups = g.cst / g.pack;
    g.dst = 128;
  } else {
    g.cst = align_up(2 * H, g.pack);
    g.groups = g.cst / g.pack;
    g.dst = align_up(D, 128);
  }
  return g;
}

/* Element offset of K (kv = 0) or V (kv = 1), head h, lane d at (p, s), per SPEC §3. */
static int64_t spec_offset(const geom *g, int64_t p, int64_t s, int64_t h, int kv, int64_t d) {
  const int64_t slot = p * g->S + s;
  if (!g->v3) return (slot * (2 * g->H) + (2 * h + kv)) * g->D + d;
  if (g->h64) {
    const int64_t grp = h / g->pack, q = h % g->pack;
    return ((slot * g->groups + grp) * g->pack + q) * 128 + kv * 64 + d;
  }
  const int64_t c = 2 * h + kv;
  return ((slot * g->groups + c / g->pack) * g->pack + c % g->pack) * g->dst + d;
}

/* A non-zero, position-dependent byte pattern of `it` bytes. */
static void pattern(int64_t layer, int64_t p, int64_t s, int64_t h, int kv, int64_t d, int64_t it,
                    unsigned char *out) {
  uint64_t x = (uint64_t)layer * 1000003u + (uint64_t)p * 8191u + (uint64_t)s * 131071u +
               (uint64_t)h * 524287u + (uint64_t)kv * 2147483647u + (uint64_t)d * 6700417u;
  uint64_t st = x;
  uint64_t r = kvp_test_rand(&st);
  for (int64_t b = 0; b < it; b++) out[b] = (unsigned char)(((r >> (8 * b)) & 0xFF) | 1u);
}

static void check_tensor_common(const kvp_tensor *t, kvp_dtype dt, int32_t ndim) {
  assert_non_null(t->data);
  assert_int_equal(t->dtype, dt);
  assert_int_equal(t->ndim, ndim);
  assert_int_equal(t->device_type, KVP_DEVICE_CPU);
  assert_int_equal(t->device_id, 0);
  for (int i = ndim; i < KVP_MAX_DIMS; i++) {
    assert_true(t->shape[i] == 0);
    assert_true(t->strides[i] == 0);
  }
}

static void expect4(const kvp_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d, int64_t sa,
                    int64_t sb, int64_t sc, int64_t sd) {
  if (t->shape[0] != a || t->shape[1] != b || t->shape[2] != c || t->shape[3] != d)
    fail_msg("shape (%lld,%lld,%lld,%lld), expected (%lld,%lld,%lld,%lld)", (long long)t->shape[0],
             (long long)t->shape[1], (long long)t->shape[2], (long long)t->shape[3], (long long)a,
             (long long)b, (long long)c, (long long)d);
  if (t->strides[0] != sa || t->strides[1] != sb || t->strides[2] != sc || t->strides[3] != sd)
    fail_msg("strides (%lld,%lld,%lld,%lld), expected (%lld,%lld,%lld,%lld)", (long long)t->strides[0],
             (long long)t->strides[1], (long long)t->strides[2], (long long)t->strides[3],
             (long long)sa, (long long)sb, (long long)sc, (long long)sd);
}

static const unsigned char *elem4(const kvp_tensor *t, int64_t it, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
  return (const unsigned char *)t->data +
         it * (i0 * t->strides[0] + i1 * t->strides[1] + i2 * t->strides[2] + i3 * t->strides[3]);
}

typedef struct layout_case {
  const char *name;
  int64_t L, P, S, H, D;
  kvp_dtype dtype;
  kvp_layout layout;
} layout_case;

static void run_layout_case(const layout_case *lc) {
  const geom g = geom_of(lc->L, lc->P, lc->S, lc->H, lc->D, lc->dtype, lc->layout);
  kvp_config cfg = kvp_test_config(lc->L, lc->H, lc->D, lc->S, lc->P, lc->dtype, lc->layout);
  kvp_cache *cache = NULL;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &cache));
  assert_non_null(cache);

  /* geometry the library reports agrees with ours */
  kvp_layout_info li;
  li.struct_size = sizeof li;
  assert_kvp_ok(kvp_cache_get_layout(cache, &li));
  assert_int_equal(li.is_h64, g.h64);
  assert_true(li.storage_num_combined_kv_heads == g.cst);
  assert_true(li.storage_num_kv_groups == g.groups);
  assert_true(li.storage_head_dim == g.dst);
  assert_true(li.itemsize == g.it);
  const int64_t layer_elems = g.P * g.S * g.cst * g.dst;
  assert_true(li.layer_bytes == layer_elems * g.it);

  kvp_tensor *pages = calloc((size_t)g.L, sizeof *pages);
  assert_non_null(pages);
  for (int64_t l = 0; l < g.L; l++) {
    kvp_tensor *t = &pages[l];
    memset(t, 0xCD, sizeof *t);
    assert_kvp_ok(kvp_cache_get_view(cache, (uint32_t)l, KVP_VIEW_PAGES, t));
    if (g.v3) {
      check_tensor_common(t, lc->dtype, 5);
      assert_true(t->shape[0] == g.P && t->shape[1] == g.S && t->shape[2] == g.groups &&
                  t->shape[3] == g.pack && t->shape[4] == g.dst);
      assert_true(t->strides[4] == 1 && t->strides[3] == g.dst && t->strides[2] == g.pack * g.dst &&
                  t->strides[1] == g.groups * g.pack * g.dst &&
                  t->strides[0] == g.S * g.groups * g.pack * g.dst);
    } else {
      check_tensor_common(t, lc->dtype, 4);
      expect4(t, g.P, g.S, 2 * g.H, g.D, g.S * 2 * g.H * g.D, 2 * g.H * g.D, g.D, 1);
    }
    /* a new cache is all zero */
    const unsigned char *b = (const unsigned char *)t->data;
    for (int64_t i = 0; i < layer_elems * g.it; i++)
      if (b[i] != 0) fail_msg("%s: layer %lld byte %lld of a new cache is %u", lc->name, (long long)l, (long long)i, b[i]);
    /* layers are distinct buffers that do not overlap */
    for (int64_t k = 0; k < l; k++) {
      const unsigned char *a0 = (const unsigned char *)pages[k].data;
      assert_true(b + layer_elems * g.it <= a0 || a0 + layer_elems * g.it <= b);
    }
  }

  /* write every K/V element of every layer at its SPEC offset */
  unsigned char pat[4];
  for (int64_t l = 0; l < g.L; l++) {
    unsigned char *base = (unsigned char *)pages[l].data;
    for (int64_t p = 0; p < g.P; p++)
      for (int64_t s = 0; s < g.S; s++)
        for (int64_t h = 0; h < g.H; h++)
          for (int kv = 0; kv < 2; kv++)
            for (int64_t d = 0; d < g.D; d++) {
              int64_t off = spec_offset(&g, p, s, h, kv, d);
              assert_true(off >= 0 && off < layer_elems);
              pattern(l, p, s, h, kv, d, g.it, pat);
              memcpy(base + off * g.it, pat, (size_t)g.it);
            }
    /* padding (heads >= H, lanes >= D) stays zero: exactly 2*P*S*H*D*it non-zero bytes */
    int64_t nonzero = 0;
    for (int64_t i = 0; i < layer_elems * g.it; i++) nonzero += base[i] != 0;
    assert_true(nonzero == 2 * g.P * g.S * g.H * g.D * g.it);
  }

  for (int64_t l = 0; l < g.L; l++) {
    const unsigned char *base = (const unsigned char *)pages[l].data;
    kvp_tensor k, v, flat, rk, rv;
    memset(&k, 0xCD, sizeof k);
    assert_kvp_ok(kvp_cache_get_view(cache, (uint32_t)l, KVP_VIEW_KEYS, &k));
    assert_kvp_ok(kvp_cache_get_view(cache, (uint32_t)l, KVP_VIEW_VALUES, &v));
    assert_kvp_ok(kvp_cache_get_view(cache, (uint32_t)l, KVP_VIEW_FLAT, &flat));
    assert_kvp_ok(kvp_cache_get_view(cache, (uint32_t)l, KVP_VIEW_REFERENCE_KEYS, &rk));
    assert_kvp_ok(kvp_cache_get_view(cache, (uint32_t)l, KVP_VIEW_REFERENCE_VALUES, &rv));
    check_tensor_common(&k, lc->dtype, 4);
    check_tensor_common(&v, lc->dtype, 4);
    check_tensor_common(&flat, lc->dtype, 4);
    check_tensor_common(&rk, lc->dtype, 4);
    check_tensor_common(&rv, lc->dtype, 4);

    /* correct K/V views: [P, S, H, D] */
    const int64_t row = g.cst * g.dst; /* elements per (page, row) */
    if (g.h64) {
      expect4(&k, g.P, g.S, g.H, 64, g.S * row, row, 128, 1);
      expect4(&v, g.P, g.S, g.H, 64, g.S * row, row, 128, 1);
      assert_ptr_equal(k.data, base);
      assert_ptr_equal(v.data, base + 64 * g.it);
    } else {
      expect4(&k, g.P, g.S, g.H, g.D, g.S * row, row, 2 * g.dst, 1);
      expect4(&v, g.P, g.S, g.H, g.D, g.S * row, row, 2 * g.dst, 1);
      assert_ptr_equal(k.data, base);
      assert_ptr_equal(v.data, base + g.dst * g.it);
    }
    /* flattened: [P, S, Cst, Dst], contiguous */
    expect4(&flat, g.P, g.S, g.cst, g.dst, g.S * row, row, g.dst, 1);
    assert_ptr_equal(flat.data, base);
    /* reference-literal views: flattened[:, :, 0::2, :] and [:, :, 1::2, :] (Python slice
     * lengths: ceil(Cst/2) and floor(Cst/2)); lanes include padding */
    expect4(&rk, g.P, g.S, (g.cst + 1) / 2, g.dst, g.S * row, row, 2 * g.dst, 1);
    expect4(&rv, g.P, g.S, g.cst / 2, g.dst, g.S * row, row, 2 * g.dst, 1);
    assert_ptr_equal(rk.data, base);
    assert_ptr_equal(rv.data, base + g.dst * g.it);

    for (int64_t p = 0; p < g.P; p++)
      for (int64_t s = 0; s < g.S; s++) {
        for (int64_t h = 0; h < g.H; h++)
          for (int64_t d = 0; d < g.D; d++) {
            pattern(l, p, s, h, 0, d, g.it, pat);
            if (memcmp(elem4(&k, g.it, p, s, h, d), pat, (size_t)g.it) != 0)
              fail_msg("%s: K mismatch at layer %lld (p=%lld, s=%lld, h=%lld, d=%lld)", lc->name,
                       (long long)l, (long long)p, (long long)s, (long long)h, (long long)d);
            pattern(l, p, s, h, 1, d, g.it, pat);
            if (memcmp(elem4(&v, g.it, p, s, h, d), pat, (size_t)g.it) != 0)
              fail_msg("%s: V mismatch at layer %lld (p=%lld, s=%lld, h=%lld, d=%lld)", lc->name,
                       (long long)l, (long long)p, (long long)s, (long long)h, (long long)d);
          }
        /* flat element (c, lane) is the PAGES element at the same row-major position */
        for (int64_t c = 0; c < g.cst; c++)
          for (int64_t d = 0; d < g.dst; d++) {
            const unsigned char *fe = elem4(&flat, g.it, p, s, c, d);
            const unsigned char *pe = base + g.it * (((p * g.S + s) * g.cst + c) * g.dst + d);
            assert_ptr_equal(fe, pe);
            /* reference views are the even / odd flat slots */
            if (c % 2 == 0) assert_ptr_equal(elem4(&rk, g.it, p, s, c / 2, d), fe);
            else assert_ptr_equal(elem4(&rv, g.it, p, s, c / 2, d), fe);
          }
        /* documented content of the reference-literal views */
        for (int64_t j = 0; j < (g.cst + 1) / 2; j++)
          for (int64_t d = 0; d < g.dst; d++) {
            const unsigned char *e = elem4(&rk, g.it, p, s, j, d);
            unsigned char zero[4] = {0, 0, 0, 0};
            if (g.h64) {
              /* slot j of rk = whole [K|V] row of head 2j (wrong for h64, as documented) */
              int64_t head = 2 * j;
              if (head < g.H) {
                pattern(l, p, s, head, d < 64 ? 0 : 1, d % 64, g.it, pat);
                assert_memory_equal(e, pat, (size_t)g.it);
              } else {
                assert_memory_equal(e, zero, (size_t)g.it);
              }
            } else {
              /* generic / v2: slot j of rk = K of head j; padding lanes and heads are zero */
              if (j < g.H && d < g.D) {
                pattern(l, p, s, j, 0, d, g.it, pat);
                assert_memory_equal(e, pat, (size_t)g.it);
              } else {
                assert_memory_equal(e, zero, (size_t)g.it);
              }
            }
          }
      }
  }
  free(pages);
  assert_kvp_ok(kvp_cache_destroy(cache));
}

static void test_layout__v2_bf16(void **state) {
  (void)state;
  const layout_case c = {"v2 bf16 H3 D40", 2, 5, 8, 3, 40, KVP_DTYPE_BF16, KVP_LAYOUT_V2};
  run_layout_case(&c);
}

static void test_layout__v2_fp8_head_dim_64_is_not_special(void **state) {
  (void)state;
  const layout_case c = {"v2 fp8 H1 D64", 2, 3, 8, 1, 64, KVP_DTYPE_F8_E5M2, KVP_LAYOUT_V2};
  run_layout_case(&c);
}

static void test_layout__v2_fp32(void **state) {
  (void)state;
  const layout_case c = {"v2 fp32 H2 D128", 1, 3, 4, 2, 128, KVP_DTYPE_F32, KVP_LAYOUT_V2};
  run_layout_case(&c);
}

static void test_layout__v3_bf16(void **state) {
  (void)state;
  const layout_case c = {"v3 bf16 H2 D128", 2, 4, 16, 2, 128, KVP_DTYPE_BF16, KVP_LAYOUT_V3};
  run_layout_case(&c);
}

static void test_layout__v3_default_layout_is_v3(void **state) {
  (void)state;
  /* KVP_LAYOUT_DEFAULT in the options means v3 */
  const layout_case c = {"default bf16 H3 D128", 1, 2, 8, 3, 128, KVP_DTYPE_BF16, KVP_LAYOUT_DEFAULT};
  kvp_config cfg = kvp_test_config(1, 3, 128, 8, 2, KVP_DTYPE_BF16, KVP_LAYOUT_DEFAULT);
  assert_int_equal(cfg.version, KVP_LAYOUT_V3);
  run_layout_case(&c);
}

static void test_layout__v3_fp16_padded_head_dim(void **state) {
  (void)state;
  const layout_case c = {"v3 fp16 H5 D200", 1, 2, 4, 5, 200, KVP_DTYPE_F16, KVP_LAYOUT_V3};
  run_layout_case(&c);
}

static void test_layout__v3_fp32(void **state) {
  (void)state;
  const layout_case c = {"v3 fp32 H3 D96", 2, 3, 8, 3, 96, KVP_DTYPE_F32, KVP_LAYOUT_V3};
  run_layout_case(&c);
}

static void test_layout__v3_fp8(void **state) {
  (void)state;
  const layout_case c = {"v3 fp8 H2 D128", 2, 3, 8, 2, 128, KVP_DTYPE_F8_E4M3FN, KVP_LAYOUT_V3};
  run_layout_case(&c);
}

static void test_layout__v3_fp8_odd_kv_heads(void **state) {
  (void)state;
  /* 2H = 6 -> Cst = 8: one zero padding head pair; reference keys show H + 1 = 4 heads */
  const layout_case c = {"v3 fp8 H3 D128", 2, 3, 8, 3, 128, KVP_DTYPE_F8_E5M2, KVP_LAYOUT_V3};
  run_layout_case(&c);
  /* MQA fp8: 2H = 2 -> Cst = 4 */
  const layout_case m = {"v3 fp8 H1 D96", 1, 2, 4, 1, 96, KVP_DTYPE_F8_E4M3FN, KVP_LAYOUT_V3};
  run_layout_case(&m);
}

static void test_layout__v3_head_dim_64_bf16(void **state) {
  (void)state;
  const layout_case c = {"h64 bf16 H4", 2, 3, 16, 4, 64, KVP_DTYPE_BF16, KVP_LAYOUT_V3};
  run_layout_case(&c);
}

static void test_layout__v3_head_dim_64_fp8_odd_kv_heads(void **state) {
  (void)state;
  /* Cst = align(3, 4) = 4: one zero slot */
  const layout_case c = {"h64 fp8 H3", 2, 3, 8, 3, 64, KVP_DTYPE_F8_E4M3FN, KVP_LAYOUT_V3};
  run_layout_case(&c);
}

static void test_layout__v3_head_dim_64_fp32_odd_slots(void **state) {
  (void)state;
  /* Cst = 3: reference keys take slots 0, 2 (ceil(3/2) = 2), values slot 1 */
  const layout_case c = {"h64 fp32 H3", 1, 2, 4, 3, 64, KVP_DTYPE_F32, KVP_LAYOUT_V3};
  run_layout_case(&c);
}

static void test_layout__v3_head_dim_32_uses_generic_layout(void **state) {
  (void)state;
  /* only D == 64 triggers h64; D = 32 pads lanes to 128 */
  const layout_case c = {"v3 bf16 H2 D32", 1, 2, 4, 2, 32, KVP_DTYPE_BF16, KVP_LAYOUT_V3};
  run_layout_case(&c);
}

/* Spot check with the SPEC numbers of row A's geometry (8 KV heads, bf16): V of head 5, lane 7,
 * page 2, row 3 sits at element ((2*S + 3)*16 + 11)*128 + 7 of the flat [P,S,16,128] pages. */
static void test_layout__single_value_round_trip_row_a_geometry(void **state) {
  (void)state;
  const int64_t S = 16, P = 4;
  kvp_config cfg = kvp_test_config(1, 8, 128, S, P, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *cache = NULL;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &cache));
  kvp_tensor pages, v, k;
  assert_kvp_ok(kvp_cache_get_view(cache, 0, KVP_VIEW_PAGES, &pages));
  const int64_t off = ((2 * S + 3) * 16 + (2 * 5 + 1)) * 128 + 7;
  const uint16_t value = 0x3F80; /* bf16 1.0 */
  memcpy((unsigned char *)pages.data + 2 * off, &value, 2);
  assert_kvp_ok(kvp_cache_get_view(cache, 0, KVP_VIEW_VALUES, &v));
  assert_kvp_ok(kvp_cache_get_view(cache, 0, KVP_VIEW_KEYS, &k));
  uint16_t got;
  memcpy(&got, elem4(&v, 2, 2, 3, 5, 7), 2);
  assert_int_equal(got, value);
  /* the key at the same position is still zero, and so are the neighbours */
  memcpy(&got, elem4(&k, 2, 2, 3, 5, 7), 2);
  assert_int_equal(got, 0);
  memcpy(&got, elem4(&v, 2, 2, 3, 5, 6), 2);
  assert_int_equal(got, 0);
  memcpy(&got, elem4(&v, 2, 2, 3, 4, 7), 2);
  assert_int_equal(got, 0);
  /* in the 5-D pages view: group 5, slot 1 (V), lane 7 */
  const int64_t o5 = 2 * pages.strides[0] + 3 * pages.strides[1] + 5 * pages.strides[2] + 1 * pages.strides[3] + 7;
  memcpy(&got, (unsigned char *)pages.data + 2 * o5, 2);
  assert_int_equal(got, value);
  assert_kvp_ok(kvp_cache_destroy(cache));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_layout__v2_bf16),
      cmocka_unit_test(test_layout__v2_fp8_head_dim_64_is_not_special),
      cmocka_unit_test(test_layout__v2_fp32),
      cmocka_unit_test(test_layout__v3_bf16),
      cmocka_unit_test(test_layout__v3_default_layout_is_v3),
      cmocka_unit_test(test_layout__v3_fp16_padded_head_dim),
      cmocka_unit_test(test_layout__v3_fp32),
      cmocka_unit_test(test_layout__v3_fp8),
      cmocka_unit_test(test_layout__v3_fp8_odd_kv_heads),
      cmocka_unit_test(test_layout__v3_head_dim_64_bf16),
      cmocka_unit_test(test_layout__v3_head_dim_64_fp8_odd_kv_heads),
      cmocka_unit_test(test_layout__v3_head_dim_64_fp32_odd_slots),
      cmocka_unit_test(test_layout__v3_head_dim_32_uses_generic_layout),
      cmocka_unit_test(test_layout__single_value_round_trip_row_a_geometry),
  };
  return cmocka_run_group_tests_name("layout", tests, NULL, NULL);
}
