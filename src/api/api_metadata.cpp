// kvp_metadata_* and kvp_batch_* shims.
#include <cstddef>
#include <cstring>

#include "core/builder.hpp"
#include "core/config.hpp"
#include "core/metadata.hpp"
#include "kvpages/metadata.h"
#include "util/error.hpp"
#include "util/handle.hpp"
#include "util/options.hpp"

using namespace kvp::detail;

namespace {
// Version 1 of kvp_metadata_desc ends before token_starts (added in 1.2): callers built against
// 1.0/1.1 pass that size.
constexpr size_t kDescV1Size = offsetof(kvp_metadata_desc, token_starts);

void fill_desc(const Metadata& md, kvp_metadata_desc& d) {
  const MetadataArrays& a = md.arrays();
  std::memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  d.abi_version = KVP_METADATA_DESC_VERSION;
  d.version = a.version;
  d.device_type = a.device_type;
  d.device_id = a.device_id;
  d.flags = md.immutable() ? KVP_METADATA_FLAG_IMMUTABLE : 0u;
  d.page_size = a.page_size;
  d.num_slices_per_kv_cache_update_page = a.num_slices_per_page;
  d.pages_tables = a.pages_tables;
  d.num_reqs = a.num_reqs;
  d.pages_per_req = a.pages_per_req;
  d.context_lens = a.context_lens;
  d.context_lens_len = a.context_lens_len;
  d.query_start_loc = a.query_start_loc;
  d.query_start_loc_len = a.query_start_loc_len;
  d.num_seqs = a.num_seqs;
  d.num_seqs_len = a.num_seqs_len;
  d.slot_mapping = a.slot_mapping;
  d.num_slices = a.num_slices;
  d.num_kv_update_slices = a.num_kv_update_slices;
  d.num_kv_update_slices_len = a.num_kv_update_slices_len;
  d.request_distribution = a.request_distribution;
  d.request_distribution_len = a.request_distribution_len;
  d.position_ids = a.position_ids;
  d.position_ids_len = a.position_ids_len;
  d.token_starts = a.token_starts;
  d.token_starts_len = a.token_starts_len;
}
}  // namespace

extern "C" {

KVP_API kvp_status kvp_metadata_desc_init(kvp_metadata_desc* desc, uint32_t struct_size) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(desc);
  init_versioned(desc, struct_size, kDescV1Size, KVP_METADATA_DESC_VERSION, "kvp_metadata_desc_init",
                 "kvp_metadata_desc");
  if (desc->struct_size >= offsetof(kvp_metadata_desc, device_type) + sizeof(kvp_device_type)) {
    desc->version = KVP_LAYOUT_V3;
    desc->device_type = KVP_DEVICE_CPU;
  }
  KVP_API_END;
}

KVP_API kvp_status kvp_metadata_create(const kvp_metadata_desc* desc, kvp_metadata** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  KVP_REQUIRE_NOT_NULL(desc);
  const kvp_metadata_desc d = read_versioned(desc, kDescV1Size, KVP_METADATA_DESC_VERSION,
                                             "kvp_metadata_create", "kvp_metadata_desc");
  *out = handle_new<kvp_metadata>(Metadata::borrow(d, "kvp_metadata_create"));
  KVP_API_END;
}

KVP_API kvp_status kvp_metadata_create_empty(kvp_layout version, int64_t num_tokens, int64_t max_num_reqs,
                                             int64_t max_pages, int64_t page_size, kvp_metadata** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  *out = handle_new<kvp_metadata>(
      Metadata::empty(version, num_tokens, max_num_reqs, max_pages, page_size, "kvp_metadata_create_empty"));
  KVP_API_END;
}

KVP_API kvp_status kvp_metadata_destroy(kvp_metadata* metadata) {
  KVP_API_BEGIN;
  handle_delete(metadata, "kvp_metadata_destroy");
  KVP_API_END;
}

KVP_API kvp_status kvp_metadata_get_array(const kvp_metadata* metadata, kvp_metadata_field field,
                                          const int32_t** data_out, int64_t* len_out) {
  KVP_API_BEGIN;
  const MetadataArrays& a = metadata_from(metadata, "kvp_metadata_get_array").arrays();
  const int32_t* p = nullptr;
  int64_t n = 0;
  switch (field) {
    case KVP_METADATA_PAGES_TABLES: p = a.pages_tables; n = a.num_reqs * a.pages_per_req; break;
    case KVP_METADATA_CONTEXT_LENS: p = a.context_lens; n = a.context_lens_len; break;
    case KVP_METADATA_QUERY_START_LOC: p = a.query_start_loc; n = a.query_start_loc_len; break;
    case KVP_METADATA_NUM_SEQS: p = a.num_seqs; n = a.num_seqs_len; break;
    case KVP_METADATA_SLOT_MAPPING: p = a.slot_mapping; n = 3 * a.num_slices; break;
    case KVP_METADATA_NUM_KV_UPDATE_SLICES: p = a.num_kv_update_slices; n = a.num_kv_update_slices_len; break;
    case KVP_METADATA_REQUEST_DISTRIBUTION: p = a.request_distribution; n = a.request_distribution_len; break;
    case KVP_METADATA_POSITION_IDS: p = a.position_ids; n = a.position_ids_len; break;
    case KVP_METADATA_TOKEN_STARTS: p = a.token_starts; n = a.token_starts_len; break;
    default:
      fail(KVP_ERR_INVALID_ARGUMENT, "kvp_metadata_get_array: unknown field %u (expected KVP_METADATA_*)",
           static_cast<unsigned>(field));
  }
  if (p == nullptr) n = 0;
  if (data_out != nullptr) *data_out = p;
  if (len_out != nullptr) *len_out = n;
  KVP_API_END;
}

KVP_API kvp_status kvp_metadata_get_desc(const kvp_metadata* metadata, kvp_metadata_desc* out) {
  KVP_API_BEGIN;
  const Metadata& md = metadata_from(metadata, "kvp_metadata_get_desc");
  KVP_REQUIRE_NOT_NULL(out);
  kvp_metadata_desc d;
  fill_desc(md, d);
  write_versioned(out, d, kDescV1Size, "kvp_metadata_get_desc", "kvp_metadata_desc");
  KVP_API_END;
}

KVP_API kvp_status kvp_batch_options_init(kvp_batch_options* opts, uint32_t struct_size) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(opts);
  init_versioned(opts, struct_size, sizeof(kvp_batch_options), KVP_BATCH_OPTIONS_VERSION, "kvp_batch_options_init",
                 "kvp_batch_options");
  KVP_API_END;
}

KVP_API kvp_status kvp_metadata_build(const kvp_config* cfg, const kvp_batch_request* requests, uint32_t num_requests,
                                      const kvp_batch_options* opts, int32_t* order_out, kvp_metadata** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  const kvp_config c = read_config(cfg, "kvp_metadata_build");
  kvp_batch_options o;
  if (opts != nullptr) {
    o = read_versioned(opts, sizeof(kvp_batch_options), KVP_BATCH_OPTIONS_VERSION, "kvp_metadata_build",
                       "kvp_batch_options");
  } else {
    std::memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.abi_version = KVP_BATCH_OPTIONS_VERSION;
  }
  *out = build_metadata(c, requests, num_requests, o, order_out, "kvp_metadata_build");
  KVP_API_END;
}

}  // extern "C"
