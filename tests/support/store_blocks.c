/* Blocks a test puts in a store and expects back (store_blocks.h). */
#include "store_blocks.h"

#include <setjmp.h>
#include <stdarg.h>
#include <string.h>

#include <cmocka.h>

#include "support.h"

kvp_store_key kvp_test_store_key(uint32_t n) {
  kvp_store_key k;
  for (int i = 0; i < 16; ++i) k.bytes[i] = (uint8_t)(n * 37u + (uint32_t)i * 11u + (n >> 8));
  memcpy(k.bytes, &n, sizeof n); /* distinct for distinct n */
  return k;
}

static uint8_t *block_of(uint32_t key, size_t n) {
  uint8_t *b = (uint8_t *)test_malloc(n + 1);
  for (size_t i = 0; i < n; ++i) b[i] = (uint8_t)(key * 7u + i * 31u);
  return b;
}

void kvp_test_store_put(kvp_store *s, uint32_t key, size_t n) {
  uint8_t *b = block_of(key, n);
  const kvp_store_key k = kvp_test_store_key(key);
  assert_kvp_ok(kvp_store_put(s, &k, b, n));
  test_free(b);
}

void kvp_test_store_expect_block(kvp_store *s, uint32_t key, size_t n) {
  uint8_t *want = block_of(key, n), *got = (uint8_t *)test_malloc(n + 1);
  size_t size = 0;
  const kvp_store_key k = kvp_test_store_key(key);
  assert_kvp_ok(kvp_store_get(s, &k, got, n + 1, &size));
  assert_int_equal(size, n);
  assert_memory_equal(got, want, n);
  test_free(got);
  test_free(want);
}
