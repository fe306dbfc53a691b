/* Blocks a test puts in a store and expects back: a key per number, and bytes that are a
 * function of the number and the size, so a block read back can be checked without keeping it. */
#ifndef KVP_TEST_STORE_BLOCKS_H
#define KVP_TEST_STORE_BLOCKS_H

#include <stddef.h>
#include <stdint.h>

#include "kvpages.h"

/* The key of block number n (distinct for distinct n). */
kvp_store_key kvp_test_store_key(uint32_t n);
/* Puts n bytes under the key of `key` (asserts KVP_OK). */
void kvp_test_store_put(kvp_store *s, uint32_t key, size_t n);
/* Asserts that the key of `key` holds the n bytes kvp_test_store_put() wrote. */
void kvp_test_store_expect_block(kvp_store *s, uint32_t key, size_t n);

#endif
