#include "harness.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reference.h"


int kvp_fuzz_more(const kvp_fuzz_reader *r) { return r->pos < r->size; }

uint8_t kvp_fuzz_u8(kvp_fuzz_reader *r) { return r->pos < r->size ? r->data[r->pos++] : 0; }

uint32_t kvp_fuzz_u32(kvp_fuzz_reader *r) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= (uint32_t)kvp_fuzz_u8(r) << (8 * i);
  return v;
}

int64_t kvp_fuzz_range(kvp_fuzz_reader *r, int64_t lo, int64_t hi) {
  const uint64_t span = (uint64_t)(hi - lo) + 1u;
  const uint64_t v = span <= 256u ? kvp_fuzz_u8(r) : kvp_fuzz_u32(r);
  return lo + (int64_t)(v % span);
}

int32_t kvp_fuzz_i32_near(kvp_fuzz_reader *r, int32_t lo, int32_t hi) {
  static const int32_t odd[8] = {-1, 0, 1, INT32_MAX, INT32_MIN, -2, 1 << 30, 0x7FFF};
  const uint8_t pick = kvp_fuzz_u8(r);
  if ((pick & 15u) == 15u) {
    if ((pick >> 4) < 8) return odd[pick >> 4];
    return (int32_t)((int64_t)hi + 1 - (int64_t)((pick >> 4) & 1u)); /* hi + 1 or hi */
  }
  return (int32_t)kvp_fuzz_range(r, lo, hi);
}

void kvp_fuzz_check(int cond, const char *what, ...) {
  if (cond) return;
  va_list ap;
  va_start(ap, what);
  fprintf(stderr, "fuzz check failed: ");
  vfprintf(stderr, what, ap);
  va_end(ap);
  fprintf(stderr, "\n  last library message: %s\n", kvp_last_error_message());
  abort();
}

kvp_cache *kvp_fuzz_cache(int64_t layers, int64_t heads, int64_t head_dim, int64_t page_size, int64_t max_len,
                          int64_t pages, kvp_dtype dtype, kvp_layout layout) {
  kvp_config cfg;
  kvp_fuzz_check(kvp_test_sized_config(layers, heads, head_dim, page_size, pages, dtype, layout, max_len, &cfg) ==
                         KVP_OK && cfg.num_pages == pages,
                 "kvp_fuzz_cache: config");
  kvp_cache *c = NULL;
  kvp_fuzz_check(kvp_cache_create(&cfg, NULL, &c) == KVP_OK, "kvp_fuzz_cache: cache");
  return c;
}
