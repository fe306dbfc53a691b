/* The checks of `kvp demo`: every attention output against the dense float64 reference, and
 * every cached key and value, read back through the cache's views, against the reference's own
 * recomputed K/V. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "demo.h"

int64_t demo_check_rows(const demo_model *m, const demo_seq *s, int64_t layer, const float *q, const float *out,
                        int64_t first, int64_t pos0, int64_t n, double *max_err) {
  double ref[DEMO_Q_WIDTH];
  int64_t t, e, bad = 0;
  for (t = 0; t < n; ++t) {
    const float *got = out + (first + t) * DEMO_Q_WIDTH;
    demo_reference(m, s, layer, pos0 + t, q + (first + t) * DEMO_Q_WIDTH, ref);
    for (e = 0; e < DEMO_Q_WIDTH; ++e) {
      const double err = fabs((double)got[e] - ref[e]);
      if (err > *max_err) *max_err = err;
      if (!(err <= 2e-5 + 2e-5 * fabs(ref[e]))) { /* ATTENTION.md §6.2, f32 output; NaN fails */
        if (bad < 5)
          fprintf(stderr, "  attention mismatch: sequence %d layer %" PRId64 " position %" PRId64 " head %" PRId64
                          " lane %" PRId64 ": %.7g, reference %.7g\n",
                  s->id, layer, pos0 + t, e / DEMO_HEAD_DIM, e % DEMO_HEAD_DIM, (double)got[e], ref[e]);
        bad++;
      }
    }
  }
  return bad;
}

/* Decodes one stored element to float (a small generic decoder for the storage dtypes). */
static float decode(const unsigned char *p, kvp_dtype dt) {
  uint32_t c = 0, e, m, s;
  int E, M, bias;
  double v;
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
    case KVP_DTYPE_F8_E5M2: c = *p; E = 5; M = 2; break;
    default: return NAN; /* not a storage dtype: never equal to a reference value */
  }
  bias = (1 << (E - 1)) - 1;
  s = (c >> (E + M)) & 1u;
  e = (c >> M) & ((1u << E) - 1u);
  m = c & ((1u << M) - 1u);
  v = e == 0 ? ldexp((double)m, 1 - bias - M) : ldexp((double)((1u << M) + m), (int)e - bias - M);
  return (float)(s ? -v : v);
}

/* Mismatches of one view (keys or values) of one layer against the reference rows `want`. */
static int64_t check_view(const kvp_tensor *view, const int32_t *pages, const demo_seq *s, int64_t layer,
                          const float *want, int64_t page_size, kvp_dtype dt, const char *what) {
  const size_t isz = kvp_dtype_bits(dt) / 8;
  int64_t pos, h, d, bad = 0;
  for (pos = 0; pos < s->computed; ++pos) {
    const int64_t page = pages[pos / page_size], row = pos % page_size;
    for (h = 0; h < DEMO_KV_HEADS; ++h)
      for (d = 0; d < DEMO_HEAD_DIM; ++d) {
        const int64_t at = page * view->strides[0] + row * view->strides[1] + h * view->strides[2] + d * view->strides[3];
        const float got = decode((const unsigned char *)view->data + (size_t)at * isz, dt);
        const float w = want[pos * DEMO_KV_WIDTH + h * DEMO_HEAD_DIM + d];
        uint32_t got_bits, want_bits; /* bit equality: -0.0 is not 0.0 */
        memcpy(&got_bits, &got, 4);
        memcpy(&want_bits, &w, 4);
        if (got_bits != want_bits) {
          if (bad < 5)
            fprintf(stderr, "  read-back mismatch: sequence %d position %" PRId64 " layer %" PRId64 " %s head %" PRId64
                            " lane %" PRId64 ": %g, reference %g\n",
                    s->id, pos, layer, what, h, d, (double)got, (double)w);
          bad++;
        }
      }
  }
  return bad;
}

int64_t demo_check_readback(kvp_cache *cache, kvp_pool *pool, const demo_seq *s, int64_t layers, int64_t page_size,
                            kvp_dtype dt) {
  int32_t pages[DEMO_MAX_LEN];
  size_t npages = 0;
  int64_t bad = 0, l;
  if (kvp_pool_get_page_table(pool, s->seq, pages, DEMO_MAX_LEN, &npages) != KVP_OK) {
    fprintf(stderr, "kvp demo: %s\n", kvp_last_error_message());
    return -1;
  }
  for (l = 0; l < layers; ++l) {
    kvp_tensor keys, values;
    const int64_t row0 = l * s->capacity * DEMO_KV_WIDTH;
    if (kvp_cache_get_view(cache, (uint32_t)l, KVP_VIEW_KEYS, &keys) != KVP_OK ||
        kvp_cache_get_view(cache, (uint32_t)l, KVP_VIEW_VALUES, &values) != KVP_OK) {
      fprintf(stderr, "kvp demo: %s\n", kvp_last_error_message());
      return -1;
    }
    bad += check_view(&keys, pages, s, l, s->keys + row0, page_size, dt, "key");
    bad += check_view(&values, pages, s, l, s->values + row0, page_size, dt, "value");
  }
  return bad;
}
