#include "core/group.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "core/concat.hpp"
#include "core/config.hpp"
#include "core/math.hpp"
#include "core/shard.hpp"
#include "util/error.hpp"
#include "util/options.hpp"
#include "util/thread_pool.hpp"

namespace kvp::detail {

namespace {

// Throws `e` again with "shard i (tp r, dp d): " after its "function: " (formatted only on failure).
[[noreturn]] void rethrow_naming_shard(const error& e, const char* fn, int64_t i, int64_t dp_size) {
  const std::string msg = e.what();
  const std::string prefix = std::string(fn) + ": ";
  const std::string rest = msg.compare(0, prefix.size(), prefix) == 0 ? msg.substr(prefix.size()) : msg;
  throw error(e.code(), format("%s: shard %lld (tp %lld, dp %lld): %s", fn, ll(i), ll(i / dp_size), ll(i % dp_size),
                               rest.c_str()));
}

// CPU shards are written several at a time when each write is below this: a larger one spreads
// over the pool by itself (cpu_concat.cpp goes parallel from 2 MiB).
constexpr int64_t kSerialShardBytes = int64_t(2) << 20;

bool write_shards_in_parallel(const HostVector<kvp_cache*>& shards, const HostVector<PreparedConcat>& preps) {
  if (shards.size() < 2 || shards[0]->impl->device_type() != KVP_DEVICE_CPU) return false;
  for (const PreparedConcat& p : preps)
    if (p.job.total_tokens * p.job.token_elems * p.job.cache_itemsize >= kSerialShardBytes) return false;
  return true;
}

}  // namespace

CacheGroup::CacheGroup(const kvp_config& cfg, const HostAllocator& alloc)
    : config_(cfg), alloc_(alloc), shards_(StdAllocator<kvp_cache*>(alloc)) {
  const Sharding s = sharding_of(cfg);
  shards_.reserve(static_cast<size_t>(s.shards * s.dp));
}

CacheGroup::~CacheGroup() {
  for (kvp_cache* c : shards_) handle_delete(c, "kvp_cache_group_destroy", true);
}

kvp_cache* CacheGroup::shard(int64_t tp_rank, int64_t dp_rank, const char* fn) const {
  const ShardCoord c = shard_coord(config_, tp_rank, dp_rank, fn);
  return shards_[static_cast<size_t>(c.tp_rank * c.dp_size + c.dp_rank)];
}

void CacheGroup::concatenate(int64_t layer, const kvp_tensor* keys, const kvp_tensor* values, int64_t num_shards,
                             const Metadata& md, const kvp_stream* streams, const char* fn) {
  if (num_shards != size())
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_shards is %lld but the group has %lld shards", fn, ll(num_shards),
         ll(size()));
  HostVector<PreparedConcat> preps(shards_.size(), StdAllocator<PreparedConcat>(alloc_));
  for (int64_t i = 0; i < size(); ++i) {
    const size_t s = static_cast<size_t>(i);
    try {
      prepare_concat(*shards_[s]->impl, layer, keys[s], values[s], md, preps[s], fn);
    } catch (const error& e) {
      rethrow_naming_shard(e, fn, i, dp_size());
    }
  }
  int64_t call_bytes = 0;
  for (const PreparedConcat& p : preps) call_bytes += p.job.total_tokens * p.job.token_elems * p.job.cache_itemsize;
  for (PreparedConcat& p : preps) p.job.call_bytes = call_bytes;
  auto write = [&](int64_t i) {
    const size_t s = static_cast<size_t>(i);
    shards_[s]->impl->backend().concatenate(preps[s].job, streams != nullptr ? streams[s] : nullptr);
  };
  if (write_shards_in_parallel(shards_, preps))
    parallel_for(size(), static_cast<int>(std::min<int64_t>(size(), ThreadPool::instance().max_threads())),
                 [&write](int64_t i) { write(i); });
  else
    for (int64_t i = 0; i < size(); ++i) write(i);
  for (PreparedConcat& p : preps) p.plan.publish(md);
}

kvp_cache_group* create_group(const kvp_config* config, const int32_t* device_ids, uint32_t num_device_ids,
                              const kvp_cache_options* opts, const char* fn) {
  const kvp_config cfg = read_config(config, fn);
  (void)layout_with_pages(cfg, fn);
  const Sharding s = sharding_of(cfg);
  const int64_t n = s.shards * s.dp;
  if (num_device_ids != 0 && num_device_ids != n)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: num_device_ids is %u but the config has %lld shards (kv_head_shards %lld x data_parallel_size %lld); "
         "pass one device per shard, or 0 for every shard on the device opts names",
         fn, num_device_ids, ll(n), ll(s.shards), ll(s.dp));
  if (num_device_ids != 0 && device_ids == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: device_ids is NULL but num_device_ids is %u", fn, num_device_ids);
  kvp_cache_options o;
  if (opts != nullptr) {
    o = read_versioned(opts, kCacheOptionsV1Size, KVP_CACHE_OPTIONS_VERSION, fn, "kvp_cache_options");
  } else {
    std::memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.abi_version = KVP_CACHE_OPTIONS_VERSION;
  }
  const HostAllocator alloc(o.allocator);
  HostPtr<CacheGroup> group = make_host<CacheGroup>(alloc, cfg, alloc);
  for (int64_t i = 0; i < n; ++i) {
    if (num_device_ids != 0) o.device_id = device_ids[i];
    const ShardRanks ranks{i / s.dp, i % s.dp};
    kvp_cache* shard = nullptr;
    try {
      shard = create_cache(&cfg, &o, &ranks, fn);
    } catch (const error& e) {
      rethrow_naming_shard(e, fn, i, s.dp);
    }
    handle_lend(shard);
    group->shards_.push_back(shard);  // reserved: does not throw
  }
  // One plan per metadata for the whole group, under shard 0's id (unique, never reused).
  for (kvp_cache* shard : group->shards_) shard->impl->share_plans(group->shards_[0]->impl->id());
  return handle_new<kvp_cache_group>(std::move(group));
}

}  // namespace kvp::detail
