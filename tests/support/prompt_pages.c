/* Prompts whose pages the test computes (prompt_pages.h). */
#include "prompt_pages.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "support.h"

static kvp_config config_of(kvp_cache *c) {
  kvp_config cfg = KVP_CONFIG_INIT;
  assert_kvp_ok(kvp_cache_get_config(c, &cfg));
  return cfg;
}

uint8_t *kvp_test_page_bytes(kvp_cache *c, uint32_t layer, int32_t page, size_t *nbytes) {
  kvp_tensor t;
  assert_kvp_ok(kvp_cache_get_view(c, layer, KVP_VIEW_FLAT, &t));
  *nbytes = kvp_test_layer_bytes(c) / (size_t)t.shape[0];
  return (uint8_t *)t.data + (size_t)page * *nbytes;
}

void kvp_test_prompt_kv(const int32_t *tokens, size_t end, uint32_t layer, uint8_t *out, size_t n) {
  uint64_t h = 1469598103934665603ull + layer;
  for (size_t t = 0; t < end; ++t) h = (h ^ (uint32_t)tokens[t]) * 1099511628211ull;
  for (size_t b = 0; b < n; ++b) {
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    out[b] = (uint8_t)(h >> 56);
  }
}

int32_t kvp_test_page_of(const kvp_pool *p, kvp_seq_id s, size_t i) {
  size_t n = 0;
  kvp_status st = kvp_pool_get_page_table(p, s, NULL, 0, &n);
  assert_true(st == KVP_OK || st == KVP_ERR_BUFFER_TOO_SMALL);
  assert_true(i < n);
  int32_t *row = (int32_t *)test_malloc(sizeof(int32_t) * n);
  assert_kvp_ok(kvp_pool_get_page_table(p, s, row, n, &n));
  const int32_t page = row[i];
  test_free(row);
  return page;
}

kvp_seq_id kvp_test_run_prompt(kvp_pool *p, kvp_cache *c, const int32_t *tokens, size_t n, uint64_t salt,
                               uint32_t flags, size_t *reused) {
  const kvp_config cfg = config_of(c);
  const size_t ps = (size_t)cfg.page_size;
  kvp_seq_id s = {0};
  size_t r = 0;
  assert_kvp_ok(kvp_pool_add_sequence(p, tokens, n, salt, flags, &s, &r));
  assert_kvp_ok(kvp_pool_check_invariants(p));
  for (size_t i = r / ps; i < n / ps; ++i)
    for (uint32_t l = 0; l < (uint32_t)cfg.num_hidden_layers; ++l) {
      size_t nb;
      uint8_t *dst = kvp_test_page_bytes(c, l, kvp_test_page_of(p, s, i), &nb);
      kvp_test_prompt_kv(tokens, (i + 1) * ps, l, dst, nb);
    }
  assert_kvp_ok(kvp_pool_set_computed(p, s, n));
  assert_kvp_ok(kvp_pool_check_invariants(p));
  if (reused != NULL) *reused = r;
  return s;
}

void kvp_test_expect_prompt_kv(const kvp_pool *p, kvp_cache *c, kvp_seq_id s, const int32_t *tokens, size_t pages) {
  const kvp_config cfg = config_of(c);
  for (size_t i = 0; i < pages; ++i)
    for (uint32_t l = 0; l < (uint32_t)cfg.num_hidden_layers; ++l) {
      size_t nb;
      const uint8_t *got = kvp_test_page_bytes(c, l, kvp_test_page_of(p, s, i), &nb);
      uint8_t *want = (uint8_t *)test_malloc(nb);
      kvp_test_prompt_kv(tokens, (i + 1) * (size_t)cfg.page_size, l, want, nb);
      assert_memory_equal(got, want, nb);
      test_free(want);
    }
}
