/* What the fuzz targets share: a reader that takes a fuzz input as a stream of small decisions
 * (past the end every read returns 0, so any input is a complete, deterministic program), a
 * check that aborts with a message (a libFuzzer finding), and small CPU caches. */
#ifndef KVP_FUZZ_HARNESS_H
#define KVP_FUZZ_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "kvpages.h"

typedef struct kvp_fuzz_reader {
  const uint8_t *data;
  size_t size, pos;
} kvp_fuzz_reader;

/* Whether unread bytes are left. */
int kvp_fuzz_more(const kvp_fuzz_reader *r);
uint8_t kvp_fuzz_u8(kvp_fuzz_reader *r);
uint32_t kvp_fuzz_u32(kvp_fuzz_reader *r);
/* A value in [lo, hi] (one byte when the range fits in one, else four). */
int64_t kvp_fuzz_range(kvp_fuzz_reader *r, int64_t lo, int64_t hi);
/* Mostly a value in [lo, hi]; one time in 16 an adversarial int32 (negative, zero, huge, off by one). */
int32_t kvp_fuzz_i32_near(kvp_fuzz_reader *r, int32_t lo, int32_t hi);

/* Aborts (a finding for libFuzzer) with the message when cond is false. */
void kvp_fuzz_check(int cond, const char *what, ...);

/* A CPU cache of exactly `pages` pages (no safety margin); aborts if it cannot be made. */
kvp_cache *kvp_fuzz_cache(int64_t layers, int64_t heads, int64_t head_dim, int64_t page_size, int64_t max_len,
                          int64_t pages, kvp_dtype dtype, kvp_layout layout);

#endif
