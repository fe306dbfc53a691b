/* A workload that makes the library's CPU paths go parallel: a cache of 8 KV heads x 128 (f32,
 * v3, 16-token pages, 8 KiB of K and V per token), one request writing `tokens` tokens into pages
 * 1.. of a layer, and host K/V inputs for it. With tokens >= 256 a kvp_concatenate() writes >= 2 MiB
 * (the threshold of the parallel write) and the whole cache serializes to >= 256 KiB (that of the
 * parallel serialization). Plain C without cmocka asserts, so a fork()ed child may use it. */
#ifndef KVP_TEST_WORKLOAD_H
#define KVP_TEST_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "kvpages.h"

typedef struct kvp_test_workload {
  kvp_config cfg;
  kvp_cache *cache;
  kvp_metadata *md;
  float *key, *value; /* tokens x 8 x 128 each */
  kvp_tensor k, v;
  int64_t tokens;
} kvp_test_workload;

/* Creates the cache (`layers` layers, room for `tokens` tokens), the metadata and inputs filled
 * from `seed`. On failure everything made is released and the status returned. */
kvp_status kvp_test_workload_init(kvp_test_workload *w, int64_t layers, int64_t tokens, uint64_t seed);
void kvp_test_workload_free(kvp_test_workload *w);
/* kvp_concatenate() of the inputs into `layer`. */
kvp_status kvp_test_workload_write(kvp_test_workload *w, uint32_t layer);
/* The whole cache serialized into a new malloc'ed buffer (*out, *len); free() it. */
kvp_status kvp_test_serialize_alloc(const kvp_cache *cache, unsigned char **out, size_t *len);

#endif
