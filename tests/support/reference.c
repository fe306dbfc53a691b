/* The independent reference shared by the cmocka tests and the fuzz targets (no cmocka here):
 * a PRNG, the element codec and the SPEC's layout formulas, and the reference writer of one
 * token slot. Computed from SPEC.md, never from the library. */
#include "reference.h"

#include <math.h>
#include <string.h>

uint64_t kvp_test_rand(uint64_t *s) {
  /* splitmix64 */
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int64_t kvp_test_rand_range(uint64_t *s, int64_t lo, int64_t hi) {
  uint64_t span = (uint64_t)(hi - lo) + 1u;
  return lo + (int64_t)(kvp_test_rand(s) % span);
}

kvp_test_geom kvp_test_geom_of(kvp_layout layout, kvp_dtype dtype, int64_t H, int64_t D, int64_t S, int64_t P) {
  kvp_test_geom g;
  g.v3 = layout == KVP_LAYOUT_V3;
  g.h64 = g.v3 && D == 64;
  g.H = H;
  g.D = D;
  g.S = S;
  g.P = P;
  g.isz = kvp_test_dtype_size(dtype);
  g.pack = 4 / g.isz;
  if (!g.v3) {
    g.C = 2 * H;
    g.Dst = D;
  } else if (g.h64) {
    g.C = (H + g.pack - 1) / g.pack * g.pack;
    g.Dst = 128;
  } else {
    g.C = (2 * H + g.pack - 1) / g.pack * g.pack;
    g.Dst = (D + 127) / 128 * 128;
  }
  return g;
}

int64_t kvp_test_token_bytes(const kvp_test_geom *g) { return g->C * g->Dst * g->isz; }

int64_t kvp_test_elem_off(const kvp_test_geom *g, int64_t slot, int64_t h, int kv, int64_t d) {
  if (g->h64) return ((slot * g->C + h) * 128 + kv * 64 + d) * g->isz;
  return ((slot * g->C + 2 * h + kv) * g->Dst + d) * g->isz;
}

kvp_test_fmt kvp_test_fmt_of(kvp_dtype d) {
  kvp_test_fmt f = {8, 23, 0};
  if (d == KVP_DTYPE_F16) f.E = 5, f.M = 10;
  if (d == KVP_DTYPE_BF16) f.E = 8, f.M = 7;
  if (d == KVP_DTYPE_F8_E4M3FN) f.E = 4, f.M = 3, f.fn = 1;
  if (d == KVP_DTYPE_F8_E5M2) f.E = 5, f.M = 2;
  return f;
}

int kvp_test_dtype_size(kvp_dtype d) { return d == KVP_DTYPE_F32 ? 4 : (d == KVP_DTYPE_F16 || d == KVP_DTYPE_BF16) ? 2 : 1; }

double kvp_test_decode(uint32_t c, kvp_dtype dt) {
  const kvp_test_fmt f = kvp_test_fmt_of(dt);
  const int bias = (1 << (f.E - 1)) - 1;
  const uint32_t emax = (1u << f.E) - 1u, mmax = (1u << f.M) - 1u;
  const uint32_t sign = (c >> (f.E + f.M)) & 1u, e = (c >> f.M) & emax, m = c & mmax;
  double v;
  if (dt == KVP_DTYPE_F32) {
    float x;
    memcpy(&x, &c, 4);
    return (double)x;
  }
  if (f.fn ? (e == emax && m == mmax) : (e == emax && m != 0)) return copysign(NAN, sign ? -1.0 : 1.0);
  if (!f.fn && e == emax) return sign ? -INFINITY : INFINITY;
  v = e == 0 ? ldexp((double)m, 1 - bias - f.M) : ldexp((double)((1u << f.M) + m), (int)e - bias - f.M);
  return sign ? -v : v;
}

uint32_t kvp_test_encode(double x, kvp_dtype dt) {
  const kvp_test_fmt f = kvp_test_fmt_of(dt);
  const int bias = (1 << (f.E - 1)) - 1, emin = 1 - bias;
  const uint32_t sbit = (signbit(x) ? 1u : 0u) << (f.E + f.M);
  const uint32_t over = f.fn ? ((1u << (f.E + f.M)) - 1u) : (((1u << f.E) - 1u) << f.M); /* e4m3fn: NaN */
  const double maxv = f.fn ? (2.0 - ldexp(1.0, 1 - f.M)) * ldexp(1.0, (1 << f.E) - 1 - bias)
                           : (2.0 - ldexp(1.0, -f.M)) * ldexp(1.0, (1 << f.E) - 2 - bias);
  double a = fabs(x), q, r;
  int e;
  if (dt == KVP_DTYPE_F32) {
    const float y = (float)x;
    uint32_t u;
    memcpy(&u, &y, 4);
    return u;
  }
  if (isnan(x)) return sbit | (f.fn ? over : (over | (1u << (f.M - 1))));
  if (isinf(x)) return sbit | over;
  if (a == 0.0) return sbit;
  (void)frexp(a, &e);
  e -= 1; /* a in [2^e, 2^(e+1)) */
  if (e < emin) e = emin;
  q = ldexp(1.0, e - f.M);
  r = rint(a / q) * q;
  if (r > maxv) return sbit | over;
  if (r < ldexp(1.0, emin)) return sbit | (uint32_t)(r / ldexp(1.0, emin - f.M));
  (void)frexp(r, &e);
  e -= 1;
  return sbit | ((uint32_t)(e + bias) << f.M) | ((uint32_t)(r / ldexp(1.0, e - f.M)) - (1u << f.M));
}

uint32_t kvp_test_load_code(const unsigned char *p, int size) {
  uint32_t c = 0;
  memcpy(&c, p, (size_t)size);
  return c;
}

void kvp_test_store_code(unsigned char *p, int size, uint32_t c) { memcpy(p, &c, (size_t)size); }

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

uint32_t kvp_test_ref_convert(uint32_t code, kvp_dtype sd, kvp_dtype dd) {
  if (sd == dd) return code;
  const double v = kvp_test_decode(code, sd);
  if (dd == KVP_DTYPE_F32) return f32_bits((float)v);
  return kvp_test_encode(v, dd);
}

uint32_t kvp_test_tensor_code(const kvp_tensor *t, int64_t tok, int64_t h, int64_t d) {
  const int sz = kvp_test_dtype_size(t->dtype);
  const int64_t e = tok * t->strides[0] + h * t->strides[1] + d * t->strides[2];
  return kvp_test_load_code((const unsigned char *)t->data + e * sz, sz);
}

void kvp_test_ref_write_token(unsigned char *pages, const kvp_test_geom *g, kvp_dtype dd, const kvp_tensor *k,
                              const kvp_tensor *v, int64_t src, int64_t slot) {
  const int isz = (int)g->isz;
  memset(pages + slot * kvp_test_token_bytes(g), 0, (size_t)kvp_test_token_bytes(g));
  for (int64_t h = 0; h < g->H; ++h)
    for (int64_t d = 0; d < g->D; ++d) {
      kvp_test_store_code(pages + kvp_test_elem_off(g, slot, h, 0, d), isz,
                          kvp_test_ref_convert(kvp_test_tensor_code(k, src, h, d), k->dtype, dd));
      kvp_test_store_code(pages + kvp_test_elem_off(g, slot, h, 1, d), isz,
                          kvp_test_ref_convert(kvp_test_tensor_code(v, src, h, d), v->dtype, dd));
    }
}

kvp_status kvp_test_sized_config(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t page_size,
                                 int64_t num_pages, kvp_dtype dtype, kvp_layout layout, int64_t max_len,
                                 kvp_config *out) {
  kvp_config_options o;
  kvp_config probe;
  kvp_layout_info li;
  kvp_status st;
  /* The budget comes from the true page bytes, so that exactly num_pages fit. */
  kvp_config_init(&probe, sizeof probe);
  probe.num_hidden_layers = layers;
  probe.num_kv_heads = kv_heads;
  probe.k_headdim = probe.v_headdim = head_dim;
  probe.max_model_length = max_len;
  probe.page_size = page_size;
  probe.kvdtype = dtype;
  probe.version = layout == 0 ? KVP_LAYOUT_V3 : layout;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  if ((st = kvp_config_get_layout(&probe, &li)) != KVP_OK) return st;
  kvp_config_options_init(&o, sizeof o);
  o.num_hidden_layers = layers;
  o.num_kv_heads = kv_heads;
  o.kv_head_dim_size = head_dim;
  o.max_model_length = max_len;
  o.page_size = page_size;
  o.kvdtype = dtype;
  o.version = layout;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  o.budget_bytes = li.page_bytes_per_layer * layers * num_pages;
  return kvp_config_create(&o, out);
}

kvp_tensor kvp_test_tensor_strided(void *data, kvp_dtype dtype, int64_t T, int64_t H, int64_t D, int64_t st,
                                   int64_t sh, int64_t sd, kvp_device_type device) {
  kvp_tensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.dtype = dtype;
  t.ndim = 3;
  t.shape[0] = T;
  t.shape[1] = H;
  t.shape[2] = D;
  t.strides[0] = st;
  t.strides[1] = sh;
  t.strides[2] = sd;
  t.device_type = device;
  return t;
}

kvp_tensor kvp_test_tensor(void *data, kvp_dtype dtype, int64_t T, int64_t H, int64_t D, kvp_device_type device) {
  return kvp_test_tensor_strided(data, dtype, T, H, D, H * D, D, 1, device);
}
