/* Fills a directory store for tests/tools/test_kvp_cli.sh with what `kvp store` must show: the
 * blocks two pools of two configs (f32 and bf16) evicted, three pages each, plus one page block
 * damaged inside (its bytes changed, put back: the file is sound, the block's checksum is not)
 * and one block that is not a page block. Usage: fill_store DIR. Exit status 0, or 1 with why. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvpages.h"
#include "reference.h"

#define CHECK(call)                                                                                  \
  do {                                                                                               \
    if ((call) != KVP_OK) {                                                                          \
      fprintf(stderr, "fill_store: %s: %s\n", #call, kvp_last_error_message());                      \
      exit(1);                                                                                       \
    }                                                                                                \
  } while (0)

/* Runs a prompt through the pool, declares it computed and frees it. */
static void run(kvp_pool *p, const int32_t *tokens, size_t n, uint64_t salt) {
  kvp_seq_id s;
  size_t reused = 0;
  CHECK(kvp_pool_add_sequence(p, tokens, n, salt, 0, &s, &reused));
  CHECK(kvp_pool_set_computed(p, s, n));
  CHECK(kvp_pool_free_sequence(p, s));
}

/* A pool of 8 pages of 4 tokens evicts the 3 full pages of a 13-token prompt into the store. */
static void evict_three(kvp_store *store, kvp_dtype dtype) {
  kvp_config cfg;
  kvp_cache *c = NULL;
  kvp_pool *p = NULL;
  int32_t a[13], b[28];
  int32_t i;
  CHECK(kvp_test_sized_config(2, 2, 64, 4, 8, dtype, KVP_LAYOUT_V3, 64, &cfg));
  CHECK(kvp_cache_create(&cfg, NULL, &c));
  CHECK(kvp_pool_create(c, NULL, &p));
  CHECK(kvp_pool_add_store(p, store));
  for (i = 0; i < 13; ++i) a[i] = 1000 + i;
  for (i = 0; i < 28; ++i) b[i] = 5000 + i;
  run(p, a, 13, 7);
  run(p, b, 28, 8);
  CHECK(kvp_pool_destroy(p));
  CHECK(kvp_cache_destroy(c));
}

int main(int argc, char **argv) {
  kvp_store *store = NULL;
  kvp_store_key keys[16], other;
  uint64_t cursor = 0;
  size_t n = 0, size = 0;
  uint8_t *block;
  const char text[] = "not a page block";
  if (argc != 2) {
    fprintf(stderr, "usage: fill_store DIR\n");
    return 2;
  }
  CHECK(kvp_store_create_directory(argv[1], 1 << 24, NULL, &store));
  evict_three(store, KVP_DTYPE_F32);
  evict_three(store, KVP_DTYPE_BF16);
  CHECK(kvp_store_list(store, &cursor, keys, 16, &n));
  if (n != 6 || cursor != 0) {
    fprintf(stderr, "fill_store: %zu blocks evicted, expected 6\n", n);
    return 1;
  }
  /* the first block, one byte of its layers changed, put back under its key */
  if (kvp_store_get(store, &keys[0], NULL, 0, &size) != KVP_ERR_BUFFER_TOO_SMALL) return 1;
  block = (uint8_t *)malloc(size);
  CHECK(kvp_store_get(store, &keys[0], block, size, &size));
  block[size - 9] ^= 0x10;
  CHECK(kvp_store_put(store, &keys[0], block, size));
  free(block);
  memset(&other, 0xEE, sizeof other);
  CHECK(kvp_store_put(store, &other, text, sizeof text));
  CHECK(kvp_store_destroy(store));
  return 0;
}
