// kvp_pool_* and kvp_cache_copy_pages shims (include/kvpages/pool.h).
#include "core/cache.hpp"
#include "core/pool.hpp"
#include "core/store.hpp"
#include "kvpages/pool.h"
#include "util/error.hpp"
#include "util/handle.hpp"
#include "util/options.hpp"

using namespace kvp::detail;

extern "C" {

KVP_API kvp_status kvp_pool_options_init(kvp_pool_options* opts, uint32_t struct_size) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(opts);
  init_versioned(opts, struct_size, kPoolOptionsV1Size, KVP_POOL_OPTIONS_VERSION, "kvp_pool_options_init",
                 "kvp_pool_options");
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_create(kvp_cache* cache, const kvp_pool_options* opts, kvp_pool** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  *out = create_pool(cache, opts, "kvp_pool_create");
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_destroy(kvp_pool* pool) {
  KVP_API_BEGIN;
  handle_delete(pool, "kvp_pool_destroy");
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_add_sequence(kvp_pool* pool, const int32_t* tokens, size_t num_tokens, uint64_t salt,
                                         uint32_t flags, kvp_seq_id* seq_out, size_t* reused_tokens_out) {
  KVP_API_BEGIN;
  Pool& p = pool_from(pool, "kvp_pool_add_sequence");
  KVP_REQUIRE_NOT_NULL(seq_out);
  *seq_out = p.add_sequence(tokens, num_tokens, salt, flags, reused_tokens_out);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_append(kvp_pool* pool, kvp_seq_id seq, const int32_t* tokens, size_t num_tokens,
                                   kvp_stream stream) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_append").append(seq, tokens, num_tokens, stream);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_set_computed(kvp_pool* pool, kvp_seq_id seq, size_t num_tokens) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_set_computed").set_computed(seq, num_tokens);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_truncate(kvp_pool* pool, kvp_seq_id seq, size_t new_length) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_truncate").truncate(seq, new_length);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_fork(kvp_pool* pool, kvp_seq_id parent, uint32_t num_children,
                                 kvp_seq_id* children_out) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_fork").fork(parent, num_children, children_out);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_free_sequence(kvp_pool* pool, kvp_seq_id seq) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_free_sequence").free_sequence(seq);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_get_sequence_length(const kvp_pool* pool, kvp_seq_id seq, size_t* length_out,
                                                size_t* computed_out) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_get_sequence_length").get_length(seq, length_out, computed_out);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_get_page_table(const kvp_pool* pool, kvp_seq_id seq, int32_t* pages_out,
                                           size_t capacity, size_t* count_out) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_get_page_table").get_page_table(seq, pages_out, capacity, count_out);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_get_slots(const kvp_pool* pool, kvp_seq_id seq, size_t start, size_t count,
                                      int32_t* slots_out) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_get_slots").get_slots(seq, start, count, slots_out);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_get_batch_request(const kvp_pool* pool, kvp_seq_id seq, kvp_batch_request* out) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_get_batch_request").get_batch_request(seq, out);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_get_page_state(const kvp_pool* pool, int32_t page, uint32_t* refcount_out,
                                           uint32_t* flags_out) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_get_page_state").get_page_state(page, refcount_out, flags_out);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_get_stats(const kvp_pool* pool, kvp_pool_stats* out) {
  KVP_API_BEGIN;
  const Pool& p = pool_from(pool, "kvp_pool_get_stats");
  KVP_REQUIRE_NOT_NULL(out);
  write_versioned(out, p.stats(), sizeof(kvp_pool_stats), "kvp_pool_get_stats", "kvp_pool_stats");
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_get_sequence_shard(const kvp_pool* pool, kvp_seq_id seq, uint32_t* shard_out) {
  KVP_API_BEGIN;
  const Pool& p = pool_from(pool, "kvp_pool_get_sequence_shard");
  KVP_REQUIRE_NOT_NULL(shard_out);
  *shard_out = p.sequence_shard(seq);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_get_shard_stats(const kvp_pool* pool, uint32_t shard, kvp_pool_shard_stats* out) {
  KVP_API_BEGIN;
  const Pool& p = pool_from(pool, "kvp_pool_get_shard_stats");
  KVP_REQUIRE_NOT_NULL(out);
  write_versioned(out, p.shard_stats(shard), sizeof(kvp_pool_shard_stats), "kvp_pool_get_shard_stats",
                  "kvp_pool_shard_stats");
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_add_store(kvp_pool* pool, kvp_store* store) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_add_store").add_store(store);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_get_tier_stats(const kvp_pool* pool, uint32_t tier, kvp_pool_tier_stats* out) {
  KVP_API_BEGIN;
  const Pool& p = pool_from(pool, "kvp_pool_get_tier_stats");
  KVP_REQUIRE_NOT_NULL(out);
  check_struct_size(out->struct_size, kPoolTierStatsV1Size, "kvp_pool_get_tier_stats", "kvp_pool_tier_stats");
  write_versioned(out, p.tier_stats(tier), kPoolTierStatsV1Size, "kvp_pool_get_tier_stats",
                  "kvp_pool_tier_stats");
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_flush_tiers(kvp_pool* pool, uint32_t flags) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_flush_tiers").flush_tiers(flags);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_check_invariants(const kvp_pool* pool) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_check_invariants").check_invariants();
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_clear_prefix_cache(kvp_pool* pool) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_clear_prefix_cache").clear_prefix_cache();
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_copy_pages(kvp_cache* cache, const int32_t* src_pages, const int32_t* dst_pages,
                                        size_t count, kvp_stream stream) {
  KVP_API_BEGIN;
  Cache& c = cache_from(cache, "kvp_cache_copy_pages");
  if (count > 0) {
    KVP_REQUIRE_NOT_NULL(src_pages);
    KVP_REQUIRE_NOT_NULL(dst_pages);
  }
  copy_cache_pages(c, src_pages, dst_pages, count, stream, "kvp_cache_copy_pages");
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_save_sequence(kvp_pool* pool, kvp_seq_id seq, void* dst, size_t capacity,
                                          size_t* size_out) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_save_sequence").save_sequence(seq, dst, capacity, size_out);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_save_sequence_to_file(kvp_pool* pool, kvp_seq_id seq, const char* path, uint32_t flags) {
  KVP_API_BEGIN;
  pool_from(pool, "kvp_pool_save_sequence_to_file").save_sequence_to_file(seq, path, flags);
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_restore_sequence(kvp_pool* pool, const void* src, size_t size, uint32_t flags,
                                             kvp_seq_id* seq_out) {
  KVP_API_BEGIN;
  Pool& p = pool_from(pool, "kvp_pool_restore_sequence");
  KVP_REQUIRE_NOT_NULL(seq_out);
  *seq_out = p.restore_sequence(src, size, flags, "kvp_pool_restore_sequence");
  KVP_API_END;
}

KVP_API kvp_status kvp_pool_restore_sequence_from_file(kvp_pool* pool, const char* path, uint32_t flags,
                                                       kvp_seq_id* seq_out) {
  KVP_API_BEGIN;
  Pool& p = pool_from(pool, "kvp_pool_restore_sequence_from_file");
  KVP_REQUIRE_NOT_NULL(seq_out);
  *seq_out = p.restore_sequence_from_file(path, flags);
  KVP_API_END;
}

}  // extern "C"
