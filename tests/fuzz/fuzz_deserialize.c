/* libFuzzer target for the deserializer: every reader entry point (new cache, into an existing
 * cache, inspect, streaming reader) on arbitrary bytes. Built only with clang and
 * -DKVPAGES_FUZZ=ON (tests/fuzz/tests.cmake); run with tests/fuzz/run.sh SECONDS. The build
 * defines FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, which makes checksums always match so that
 * the fuzzer reaches the structural checks behind them. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kvpages.h"

/* Targets shaped like the golden blobs, so inputs derived from them pass the geometry checks: the
 * two whole caches of v1.0/ and the shard (tp 1, dp 1) of v1.1/ with its whole cache. */
static kvp_cache *g_targets[2], *g_shard, *g_shard_whole;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  g_targets[0] = kvp_fuzz_cache(2, 2, 64, 4, 64, 3, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  g_targets[1] = kvp_fuzz_cache(2, 1, 8, 4, 64, 5, KVP_DTYPE_F8_E4M3FN, KVP_LAYOUT_V2);
  kvp_config cfg;
  kvp_fuzz_check(kvp_test_sized_config(2, 4, 64, 4, 8, KVP_DTYPE_BF16, KVP_LAYOUT_V3, 64, &cfg) == KVP_OK,
                 "shard config");
  cfg.num_pages = 8;
  cfg.kv_head_shards = cfg.requested_kv_head_shards = 2;
  cfg.data_parallel_size = 2;
  kvp_fuzz_check(kvp_cache_create_shard(&cfg, 1, 1, NULL, &g_shard) == KVP_OK, "shard");
  kvp_fuzz_check(kvp_cache_create(&cfg, NULL, &g_shard_whole) == KVP_OK, "shard's whole cache");
  return 0;
}

typedef struct {
  const uint8_t *data;
  size_t size, pos;
} reader_state;

static int32_t KVP_CALL fuzz_read(void *dst, size_t n, size_t *got, void *ud) {
  reader_state *r = (reader_state *)ud;
  size_t k = r->size - r->pos;
  if (k > n) k = n;
  if (k > 97) k = 97; /* uneven pieces */
  memcpy(dst, r->data + r->pos, k);
  r->pos += k;
  *got = k;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kvp_deserialize_options o;
  kvp_serialized_info info;
  kvp_cache *c = NULL;
  reader_state r = {data, size, 0};
  kvp_deserialize_options_init(&o, sizeof o);
  o.max_cache_bytes = 64u << 20; /* the fuzzer must not make us allocate gigabytes */

  if (kvp_deserialize_new(data, size, &o, &c) == KVP_OK) kvp_cache_destroy(c);
  c = NULL;
  if (kvp_deserialize_new_from_reader(fuzz_read, &r, &o, &c) == KVP_OK) kvp_cache_destroy(c);
  for (int t = 0; t < 2; ++t) {
    static const int32_t dst[] = {2, 0, 1};
    kvp_deserialize_into(g_targets[t], data, size, NULL, 0);
    kvp_deserialize_into(g_targets[t], data, size, dst, 2);
    r.pos = 0;
    kvp_deserialize_into_from_reader(g_targets[t], fuzz_read, &r, NULL, 0);
  }
  /* Re-sharding: the input alone, and twice (two blobs holding the same entries). */
  const kvp_blob_ref refs[2] = {{data, size, NULL}, {data, size, NULL}};
  kvp_deserialize_into(g_shard, data, size, NULL, 0);
  kvp_deserialize_shards_into(g_shard, refs, 1);
  kvp_deserialize_shards_into(g_shard_whole, refs, 1);
  kvp_deserialize_shards_into(g_shard_whole, refs, 2);
  kvp_deserialize_shards_into(g_targets[0], refs, 1);
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  kvp_serialized_inspect(data, size, 0, &info);
  kvp_serialized_inspect(data, size, KVP_INSPECT_VERIFY, &info);
  return 0;
}
