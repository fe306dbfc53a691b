// kvp_serialize* / kvp_deserialize* / kvp_serialized_* shims: wrap buffers, callbacks and files in
// the core's sinks and sources (core/serialize_io.hpp) and run the core inside the API guard.
#include <cstddef>
#include <cstring>

#include "core/cache.hpp"
#include "core/config.hpp"
#include "core/serialize.hpp"
#include "kvpages/serialize.h"
#include "util/error.hpp"
#include "util/handle.hpp"
#include "util/options.hpp"

using namespace kvp::detail;
using namespace kvp::detail::ser;

namespace {

void require_src(const void* src, size_t len, const char* function) {
  if (src == nullptr && len != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: src is NULL but len is %zu", function, len);
}

void require_path(const char* path, const char* function) {
  if (path == nullptr) fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'path' must not be NULL", function);
  if (path[0] == '\0') fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'path' must not be empty", function);
}

}  // namespace

extern "C" {

KVP_API kvp_status kvp_serialize_options_init(kvp_serialize_options* opts, uint32_t struct_size) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(opts);
  init_versioned(opts, struct_size, sizeof(kvp_serialize_options), KVP_SERIALIZE_OPTIONS_VERSION,
                 "kvp_serialize_options_init", "kvp_serialize_options");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_options_init(kvp_deserialize_options* opts, uint32_t struct_size) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(opts);
  init_versioned(opts, struct_size, sizeof(kvp_deserialize_options), KVP_DESERIALIZE_OPTIONS_VERSION,
                 "kvp_deserialize_options_init", "kvp_deserialize_options");
  KVP_API_END;
}

KVP_API kvp_status kvp_serialized_size(const kvp_cache* cache, const kvp_serialize_options* opts, size_t* out) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_serialized_size");
  KVP_REQUIRE_NOT_NULL(out);
  const Selection sel = read_selection(c, opts, "kvp_serialized_size");
  *out = static_cast<size_t>(geometry_of(c, sel, "kvp_serialized_size").total_bytes);
  KVP_API_END;
}

KVP_API kvp_status kvp_serialize(const kvp_cache* cache, const kvp_serialize_options* opts, void* dst, size_t cap,
                                 size_t* written_out) {
  KVP_API_BEGIN;
  const char* fn = "kvp_serialize";
  const Cache& c = cache_from(cache, fn);
  KVP_REQUIRE_NOT_NULL(written_out);
  if (dst == nullptr && cap != 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: dst is NULL but cap is %zu", fn, cap);
  const Selection sel = read_selection(c, opts, fn);
  const size_t need = static_cast<size_t>(geometry_of(c, sel, fn).total_bytes);
  if (cap < need) {
    *written_out = need;
    fail(KVP_ERR_BUFFER_TOO_SMALL, "%s: the blob needs %zu bytes but cap is %zu", fn, need, cap);
  }
  BufferSink sink(static_cast<uint8_t*>(dst));
  serialize(c, sel, sink, fn);
  *written_out = sink.written();
  KVP_API_END;
}

KVP_API kvp_status kvp_serialize_to_writer(const kvp_cache* cache, const kvp_serialize_options* opts, kvp_write_fn fn,
                                           void* user_data) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_serialize_to_writer");
  KVP_REQUIRE_NOT_NULL(fn);
  const Selection sel = read_selection(c, opts, "kvp_serialize_to_writer");
  WriterSink sink(fn, user_data, c.allocator(), "kvp_serialize_to_writer");
  serialize(c, sel, sink, "kvp_serialize_to_writer");
  KVP_API_END;
}

KVP_API kvp_status kvp_serialize_to_file(const kvp_cache* cache, const kvp_serialize_options* opts, const char* path) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_serialize_to_file");
  require_path(path, "kvp_serialize_to_file");
  const Selection sel = read_selection(c, opts, "kvp_serialize_to_file");
  serialize_to_file(c, sel, path, "kvp_serialize_to_file");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_new(const void* src, size_t len, const kvp_deserialize_options* opts,
                                       kvp_cache** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  require_src(src, len, "kvp_deserialize_new");
  BufferSource s(src, len, "kvp_deserialize_new");
  *out = deserialize_new(s, opts, "kvp_deserialize_new");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_new_from_reader(kvp_read_fn fn, void* user_data, const kvp_deserialize_options* opts,
                                                   kvp_cache** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  KVP_REQUIRE_NOT_NULL(fn);
  ReaderSource s(fn, user_data, "kvp_deserialize_new_from_reader");
  *out = deserialize_new(s, opts, "kvp_deserialize_new_from_reader");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_new_from_file(const char* path, const kvp_deserialize_options* opts,
                                                 kvp_cache** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  require_path(path, "kvp_deserialize_new_from_file");
  FileSource s(path, "kvp_deserialize_new_from_file");
  *out = deserialize_new(s, opts, "kvp_deserialize_new_from_file");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_into(kvp_cache* cache, const void* src, size_t len, const int32_t* dst_page_ids,
                                        uint32_t num_dst_page_ids) {
  KVP_API_BEGIN;
  Cache& c = cache_from(cache, "kvp_deserialize_into");
  require_src(src, len, "kvp_deserialize_into");
  BufferSource s(src, len, "kvp_deserialize_into");
  deserialize_into(c, s, dst_page_ids, num_dst_page_ids, "kvp_deserialize_into");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_into_from_reader(kvp_cache* cache, kvp_read_fn fn, void* user_data,
                                                    const int32_t* dst_page_ids, uint32_t num_dst_page_ids) {
  KVP_API_BEGIN;
  Cache& c = cache_from(cache, "kvp_deserialize_into_from_reader");
  KVP_REQUIRE_NOT_NULL(fn);
  ReaderSource s(fn, user_data, "kvp_deserialize_into_from_reader");
  deserialize_into(c, s, dst_page_ids, num_dst_page_ids, "kvp_deserialize_into_from_reader");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_into_from_file(kvp_cache* cache, const char* path, const int32_t* dst_page_ids,
                                                  uint32_t num_dst_page_ids) {
  KVP_API_BEGIN;
  Cache& c = cache_from(cache, "kvp_deserialize_into_from_file");
  require_path(path, "kvp_deserialize_into_from_file");
  FileSource s(path, "kvp_deserialize_into_from_file");
  deserialize_into(c, s, dst_page_ids, num_dst_page_ids, "kvp_deserialize_into_from_file");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_shards_into(kvp_cache* cache, const kvp_blob_ref* blobs, uint32_t num_blobs) {
  KVP_API_BEGIN;
  Cache& c = cache_from(cache, "kvp_deserialize_shards_into");
  deserialize_shards_into(c, blobs, num_blobs, "kvp_deserialize_shards_into");
  KVP_API_END;
}

}  // extern "C"

namespace {

// Callers built against kvpages 1.0-1.2 hold an info whose config is version 1 of kvp_config.
constexpr size_t kInfoV1Size = offsetof(kvp_serialized_info, config) + kConfigV1Size;

// ... 1.3 one ends after its (version 2) config.
constexpr size_t kInfoV2Size = offsetof(kvp_serialized_info, shard);

// Inspects into a whole info, then hands the caller the version its struct_size is exactly:
// version 3 (1.4: the shard), version 2 (1.3: config version 2), else version 1 (config version 1).
void inspect_into(Source& s, uint32_t flags, kvp_serialized_info* out, const char* fn) {
  check_struct_size(out->struct_size, kInfoV1Size, fn, "kvp_serialized_info");
  const uint32_t size = out->struct_size;
  kvp_serialized_info info;
  std::memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  inspect(s, (flags & KVP_INSPECT_VERIFY) != 0, &info, fn);
  spell_out_sharding(info.config);
  if (size == sizeof info) {
    std::memcpy(out, &info, sizeof info);
    return;
  }
  const bool v2 = size == kInfoV2Size;
  info.struct_size = static_cast<uint32_t>(v2 ? kInfoV2Size : kInfoV1Size);
  set_config_version(info.config, v2);
  std::memcpy(out, &info, info.struct_size);
}

}  // namespace

extern "C" {

KVP_API kvp_status kvp_serialized_inspect(const void* src, size_t len, uint32_t flags, kvp_serialized_info* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  require_src(src, len, "kvp_serialized_inspect");
  if ((flags & ~KVP_INSPECT_VERIFY) != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_serialized_inspect: unknown flags 0x%x", flags);
  BufferSource s(src, len, "kvp_serialized_inspect");
  inspect_into(s, flags, out, "kvp_serialized_inspect");
  KVP_API_END;
}

KVP_API kvp_status kvp_serialized_inspect_file(const char* path, uint32_t flags, kvp_serialized_info* out) {
  KVP_API_BEGIN;
  require_path(path, "kvp_serialized_inspect_file");
  KVP_REQUIRE_NOT_NULL(out);
  if ((flags & ~KVP_INSPECT_VERIFY) != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_serialized_inspect_file: unknown flags 0x%x", flags);
  FileSource s(path, "kvp_serialized_inspect_file");
  inspect_into(s, flags, out, "kvp_serialized_inspect_file");
  KVP_API_END;
}

}  // extern "C"
