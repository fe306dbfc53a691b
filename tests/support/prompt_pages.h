/* Prompts whose pages the test "computes": every full page of a prompt holds, in every layer of
 * the cache, bytes that are a function of the prompt's tokens up to the page's end (and the
 * layer), so a page the pool reused, restored from a storage tier or from a saved sequence can be
 * compared with what computing it gives. For pools over a CPU cache (the bytes are written
 * through KVP_VIEW_FLAT). */
#ifndef KVP_TEST_PROMPT_PAGES_H
#define KVP_TEST_PROMPT_PAGES_H

#include <stddef.h>
#include <stdint.h>

#include "kvpages.h"

/* The bytes of `page` in `layer` of a CPU cache; *nbytes receives their count. */
uint8_t *kvp_test_page_bytes(kvp_cache *c, uint32_t layer, int32_t page, size_t *nbytes);
/* What computing a page of a prompt gives in one layer: n bytes, from the prompt's tokens up to
 * the page's end, tokens[0, end) (end = (i + 1) * page_size for full page i). */
void kvp_test_prompt_kv(const int32_t *tokens, size_t end, uint32_t layer, uint8_t *out, size_t n);
/* The id of the sequence's i-th page (asserts it has one). */
int32_t kvp_test_page_of(const kvp_pool *p, kvp_seq_id s, size_t i);
/* Adds a prompt of n tokens (salt, flags as kvp_pool_add_sequence), "computes" the full pages it
 * did not reuse, declares all n tokens computed, checks the pool's invariants; *reused (if not
 * NULL) receives the tokens reused. */
kvp_seq_id kvp_test_run_prompt(kvp_pool *p, kvp_cache *c, const int32_t *tokens, size_t n, uint64_t salt,
                               uint32_t flags, size_t *reused);
/* Asserts that the sequence's first `pages` pages hold, in every layer, what computing them gives. */
void kvp_test_expect_prompt_kv(const kvp_pool *p, kvp_cache *c, kvp_seq_id s, const int32_t *tokens, size_t pages);

#endif
