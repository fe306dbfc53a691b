/* The tiny model of `kvp demo` and its dense float64 reference attention.
 *
 * Every cache layer is one attention layer with its own seeded random projections. Its input at a
 * position is a hidden vector derived from the running hash of the tokens up to that position,
 * standing in for what the layers below a real attention layer give: like a real model, the K/V
 * of a position depends on its whole prefix, so a page reused from the prefix cache is right only
 * if it holds exactly what recomputing that prefix writes. Keys and values are quantized to
 * multiples of 1/4 in [-1.75, 1.75], which every cache dtype (fp8 e5m2 included) stores exactly:
 * the comparison with the reference then tests the attention, not the storage rounding. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "demo.h"

uint32_t demo_mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Uniform in [-1, 1) from 24 random bits. */
static float unit(uint64_t bits) { return (float)(bits >> 40) * (2.0f / 16777216.0f) - 1.0f; }

static float *random_weights(uint64_t *rng, int64_t n, float bound) {
  float *w = (float *)malloc(sizeof(float) * (size_t)n);
  int64_t i;
  if (w != NULL)
    for (i = 0; i < n; ++i) w[i] = bound * unit(splitmix64(rng));
  return w;
}

int demo_model_init(demo_model *m, int64_t layers) {
  /* Hidden entries are uniform in [-1, 1) (variance 1/3); weights uniform in [-b, b] with
   * b = sqrt(9 / DEMO_HIDDEN) give projections of variance 1: logits of order 1 after the scale. */
  const float bound = sqrtf(9.0f / (float)DEMO_HIDDEN);
  uint64_t rng = 0x6b7670616765ULL; /* fixed seed: every run computes the same numbers */
  memset(m, 0, sizeof *m);
  m->layers = layers;
  m->softmax_scale = 1.0f / sqrtf((float)DEMO_HEAD_DIM);
  m->wq = random_weights(&rng, layers * DEMO_HIDDEN * DEMO_Q_WIDTH, bound);
  m->wk = random_weights(&rng, layers * DEMO_HIDDEN * DEMO_KV_WIDTH, bound);
  m->wv = random_weights(&rng, layers * DEMO_HIDDEN * DEMO_KV_WIDTH, bound);
  if (m->wq == NULL || m->wk == NULL || m->wv == NULL) {
    demo_model_free(m);
    return -1;
  }
  return 0;
}

void demo_model_free(demo_model *m) {
  free(m->wq);
  free(m->wk);
  free(m->wv);
  memset(m, 0, sizeof *m);
}

static void hidden_of(uint32_t state, float *x) {
  int64_t i;
  for (i = 0; i < DEMO_HIDDEN; ++i) x[i] = unit((uint64_t)demo_mix32(state ^ demo_mix32((uint32_t)i + 0x51ed27U)) << 32);
}

/* y[width] = x[DEMO_HIDDEN] . w[DEMO_HIDDEN][width] (row by row, so the compiler vectorizes it). */
static void project(const float *x, const float *w, int64_t width, float *y) {
  int64_t i, j;
  for (j = 0; j < width; ++j) y[j] = 0.0f;
  for (i = 0; i < DEMO_HIDDEN; ++i)
    for (j = 0; j < width; ++j) y[j] += x[i] * w[i * width + j];
}

static void quantize(float *y, int64_t n) {
  int64_t j;
  for (j = 0; j < n; ++j) y[j] = fminf(fmaxf(roundf(y[j] * 4.0f), -7.0f), 7.0f) * 0.25f;
}

void demo_query(const demo_model *m, int64_t layer, uint32_t state, float *q) {
  float x[DEMO_HIDDEN];
  hidden_of(state, x);
  project(x, m->wq + layer * DEMO_HIDDEN * DEMO_Q_WIDTH, DEMO_Q_WIDTH, q);
}

void demo_set_token(demo_seq *s, int64_t pos, int32_t tok) {
  s->tokens[pos] = tok;
  s->state[pos] = demo_mix32((pos > 0 ? s->state[pos - 1] : 0x9e3779b9U) ^ (uint32_t)tok);
}

static float *kv_row(const demo_seq *s, float *base, int64_t layer, int64_t pos) {
  return base + (layer * s->capacity + pos) * DEMO_KV_WIDTH;
}

int demo_seq_reserve(demo_seq *s, int64_t layers, int64_t capacity) {
  const size_t n = (size_t)(layers * capacity * DEMO_KV_WIDTH);
  s->keys = (float *)calloc(n, sizeof(float));
  s->values = (float *)calloc(n, sizeof(float));
  s->capacity = capacity;
  s->known = 0;
  return s->keys != NULL && s->values != NULL ? 0 : -1;
}

int demo_seq_copy_reference(demo_seq *to, const demo_seq *from, int64_t layers) {
  if (demo_seq_reserve(to, layers, from->capacity) != 0) return -1;
  memcpy(to->keys, from->keys, sizeof(float) * (size_t)(layers * from->capacity * DEMO_KV_WIDTH));
  memcpy(to->values, from->values, sizeof(float) * (size_t)(layers * from->capacity * DEMO_KV_WIDTH));
  to->known = from->known;
  return 0;
}

void demo_seq_extend(const demo_model *m, demo_seq *s, int64_t upto) {
  float x[DEMO_HIDDEN];
  int64_t pos, l;
  for (pos = s->known; pos < upto; ++pos) {
    hidden_of(s->state[pos], x);
    for (l = 0; l < m->layers; ++l) {
      float *k = kv_row(s, s->keys, l, pos), *v = kv_row(s, s->values, l, pos);
      project(x, m->wk + l * DEMO_HIDDEN * DEMO_KV_WIDTH, DEMO_KV_WIDTH, k);
      project(x, m->wv + l * DEMO_HIDDEN * DEMO_KV_WIDTH, DEMO_KV_WIDTH, v);
      quantize(k, DEMO_KV_WIDTH);
      quantize(v, DEMO_KV_WIDTH);
    }
  }
  if (upto > s->known) s->known = upto;
}

void demo_seq_free(demo_seq *s) {
  free(s->keys);
  free(s->values);
  s->keys = s->values = NULL;
}

void demo_reference(const demo_model *m, const demo_seq *s, int64_t layer, int64_t pos, const float *q,
                    double *out) {
  double logits[DEMO_MAX_LEN];
  const int64_t group = DEMO_Q_HEADS / DEMO_KV_HEADS;
  int64_t h, j, d;
  for (h = 0; h < DEMO_Q_HEADS; ++h) {
    const int64_t g = h / group;
    const float *qh = q + h * DEMO_HEAD_DIM;
    double mx = -INFINITY, sum = 0.0;
    double *o = out + h * DEMO_HEAD_DIM;
    for (j = 0; j <= pos; ++j) {
      const float *k = kv_row(s, s->keys, layer, j) + g * DEMO_HEAD_DIM;
      double dot = 0.0;
      for (d = 0; d < DEMO_HEAD_DIM; ++d) dot += (double)qh[d] * (double)k[d];
      logits[j] = (double)m->softmax_scale * dot;
      if (logits[j] > mx) mx = logits[j];
    }
    for (d = 0; d < DEMO_HEAD_DIM; ++d) o[d] = 0.0;
    for (j = 0; j <= pos; ++j) {
      const float *v = kv_row(s, s->values, layer, j) + g * DEMO_HEAD_DIM;
      const double w = exp(logits[j] - mx);
      sum += w;
      for (d = 0; d < DEMO_HEAD_DIM; ++d) o[d] += w * (double)v[d];
    }
    for (d = 0; d < DEMO_HEAD_DIM; ++d) o[d] /= sum;
  }
}
