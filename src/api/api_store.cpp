// kvp_store_* shims (include/kvpages/store.h).
#include <cstring>

#include "core/store.hpp"
#include "core/store_block.hpp"
#include "kvpages/store.h"
#include "util/error.hpp"
#include "util/handle.hpp"
#include "util/options.hpp"

using namespace kvp::detail;

namespace {

// Reads the options of a shipped store and checks its flags against `allowed`.
kvp_store_options read_store_options(const kvp_store_options* opts, uint32_t allowed, const char* fn) {
  kvp_store_options o;
  std::memset(&o, 0, sizeof o);
  if (opts != nullptr) o = read_versioned(opts, sizeof(kvp_store_options), KVP_STORE_OPTIONS_VERSION, fn, "kvp_store_options");
  if ((o.flags & ~allowed) != 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: unknown flags 0x%x in kvp_store_options.flags", fn, o.flags);
  if (o._reserved != 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: kvp_store_options._reserved must be 0", fn);
  check_host_allocator(o.allocator, fn);
  return o;
}

void require_bound(uint64_t max_bytes, const char* fn) {
  if (max_bytes == 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: max_bytes must be > 0", fn);
}

[[noreturn]] void no_block(const kvp_store_key* key, const char* fn) {
  const StoreKey k = StoreKey::from(*key);
  fail(KVP_ERR_NOT_FOUND, "%s: no block under key %016llx%016llx", fn, static_cast<unsigned long long>(k.hi),
       static_cast<unsigned long long>(k.lo));
}

// The most keys one kvp_store_list call returns (it converts them through a buffer of this many).
constexpr size_t kListPage = 4096;

}  // namespace

extern "C" {

KVP_API kvp_status kvp_store_options_init(kvp_store_options* opts, uint32_t struct_size) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(opts);
  init_versioned(opts, struct_size, sizeof(kvp_store_options), KVP_STORE_OPTIONS_VERSION, "kvp_store_options_init",
                 "kvp_store_options");
  KVP_API_END;
}

KVP_API kvp_status kvp_store_create(const kvp_store_vtable* vtable, kvp_store** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  KVP_REQUIRE_NOT_NULL(vtable);
  *out = create_plugin_store(vtable, "kvp_store_create");
  KVP_API_END;
}

KVP_API kvp_status kvp_store_create_memory(uint64_t max_bytes, const kvp_store_options* opts, kvp_store** out) {
  KVP_API_BEGIN;
  const char* fn = "kvp_store_create_memory";
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  const kvp_store_options o = read_store_options(opts, 0, fn);
  require_bound(max_bytes, fn);
  const HostAllocator alloc(o.allocator);
  *out = handle_new<kvp_store>(make_memory_store(max_bytes, alloc));
  KVP_API_END;
}

KVP_API kvp_status kvp_store_create_directory(const char* path, uint64_t max_bytes, const kvp_store_options* opts,
                                              kvp_store** out) {
  KVP_API_BEGIN;
  const char* fn = "kvp_store_create_directory";
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  KVP_REQUIRE_NOT_NULL(path);
  const kvp_store_options o = read_store_options(opts, KVP_STORE_FLAG_NO_SYNC, fn);
  require_bound(max_bytes, fn);
  const HostAllocator alloc(o.allocator);
  const bool sync = (o.flags & KVP_STORE_FLAG_NO_SYNC) == 0;
  *out = handle_new<kvp_store>(make_directory_store(path, max_bytes, sync, alloc, fn));
  KVP_API_END;
}

KVP_API kvp_status kvp_store_destroy(kvp_store* store) {
  KVP_API_BEGIN;
  handle_delete(store, "kvp_store_destroy");
  KVP_API_END;
}

KVP_API kvp_status kvp_store_put(kvp_store* store, const kvp_store_key* key, const void* data, size_t size) {
  KVP_API_BEGIN;
  Store& s = store_from(store, "kvp_store_put");
  KVP_REQUIRE_NOT_NULL(key);
  if (size > 0 && data == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_store_put: 'data' must not be NULL when size is %zu", size);
  s.put(StoreKey::from(*key), data, size);
  KVP_API_END;
}

KVP_API kvp_status kvp_store_get(kvp_store* store, const kvp_store_key* key, void* dst, size_t capacity,
                                 size_t* size_out) {
  KVP_API_BEGIN;
  Store& s = store_from(store, "kvp_store_get");
  KVP_REQUIRE_NOT_NULL(key);
  KVP_REQUIRE_NOT_NULL(size_out);
  if (capacity > 0 && dst == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_store_get: 'dst' must not be NULL when capacity is %zu", capacity);
  if (!s.get(StoreKey::from(*key), dst, capacity, size_out)) no_block(key, "kvp_store_get");
  KVP_API_END;
}

KVP_API kvp_status kvp_store_exists(kvp_store* store, const kvp_store_key* keys, size_t count, uint8_t* found_out) {
  KVP_API_BEGIN;
  Store& s = store_from(store, "kvp_store_exists");
  if (count > 0 && (keys == nullptr || found_out == nullptr))
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_store_exists: '%s' must not be NULL when count is %zu",
         keys == nullptr ? "keys" : "found_out", count);
  if (count == 0) return KVP_OK;
  HostVector<StoreKey> k(count, StoreKey{}, HostAllocator());
  for (size_t i = 0; i < count; ++i) k[i] = StoreKey::from(keys[i]);
  s.exists(k.data(), count, found_out);
  KVP_API_END;
}

KVP_API kvp_status kvp_store_remove(kvp_store* store, const kvp_store_key* key) {
  KVP_API_BEGIN;
  Store& s = store_from(store, "kvp_store_remove");
  KVP_REQUIRE_NOT_NULL(key);
  if (!s.remove(StoreKey::from(*key))) no_block(key, "kvp_store_remove");
  KVP_API_END;
}

KVP_API kvp_status kvp_store_get_stats(kvp_store* store, kvp_store_stats* out) {
  KVP_API_BEGIN;
  Store& s = store_from(store, "kvp_store_get_stats");
  KVP_REQUIRE_NOT_NULL(out);
  write_versioned(out, s.stats(), sizeof(kvp_store_stats), "kvp_store_get_stats", "kvp_store_stats");
  KVP_API_END;
}

KVP_API kvp_status kvp_store_scrub(kvp_store* store, kvp_store_scrub_report* report) {
  KVP_API_BEGIN;
  Store& s = store_from(store, "kvp_store_scrub");
  KVP_REQUIRE_NOT_NULL(report);
  check_struct_size(report->struct_size, sizeof(kvp_store_scrub_report), "kvp_store_scrub", "kvp_store_scrub_report");
  write_versioned(report, s.scrub(), sizeof(kvp_store_scrub_report), "kvp_store_scrub", "kvp_store_scrub_report");
  KVP_API_END;
}

KVP_API kvp_status kvp_store_list(kvp_store* store, uint64_t* cursor, kvp_store_key* keys, size_t capacity,
                                  size_t* count_out) {
  KVP_API_BEGIN;
  Store& s = store_from(store, "kvp_store_list");
  KVP_REQUIRE_NOT_NULL(cursor);
  KVP_REQUIRE_NOT_NULL(keys);
  KVP_REQUIRE_NOT_NULL(count_out);
  if (capacity == 0) fail(KVP_ERR_INVALID_ARGUMENT, "kvp_store_list: capacity must be > 0");
  HostVector<StoreKey> page(capacity < kListPage ? capacity : kListPage, StoreKey{}, HostAllocator());
  uint64_t next = *cursor;
  const size_t n = s.list(&next, page.data(), page.size());
  for (size_t i = 0; i < n; ++i) keys[i] = page[i].to_c();
  *count_out = n;
  *cursor = next;
  KVP_API_END;
}

KVP_API kvp_status kvp_store_block_inspect(const void* block, size_t size, kvp_store_block_info* out) {
  KVP_API_BEGIN;
  const char* fn = "kvp_store_block_inspect";
  KVP_REQUIRE_NOT_NULL(out);
  if (size > 0 && block == nullptr) fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'block' must not be NULL when size is %zu", fn, size);
  check_struct_size(out->struct_size, sizeof(kvp_store_block_info), fn, "kvp_store_block_info");
  write_versioned(out, block_inspect(static_cast<const uint8_t*>(block), size, fn), sizeof(kvp_store_block_info), fn,
                  "kvp_store_block_info");
  KVP_API_END;
}

}  // extern "C"
