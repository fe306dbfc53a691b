#include "core/metadata.hpp"

#include <cstring>
#include <limits>

#include "util/checked.hpp"
#include "util/error.hpp"

namespace kvp::detail {

namespace {

void check_len(const int32_t* p, int64_t len, const char* name, const char* fn) {
  if (len < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s length %lld is negative", fn, name, ll(len));
  if (p == nullptr && len != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s is NULL but its length is %lld", fn, name, ll(len));
}
}  // namespace

void check_metadata_structure(const MetadataArrays& a, const char* fn) {
  if (a.version != KVP_LAYOUT_V2 && a.version != KVP_LAYOUT_V3)
    fail(KVP_ERR_NOT_FOUND, "%s: unknown metadata version %u (expected v2 or v3)", fn, static_cast<unsigned>(a.version));
  if (a.device_type != KVP_DEVICE_CPU && a.device_type != KVP_DEVICE_CUDA)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: unknown metadata device_type %d (expected KVP_DEVICE_CPU or KVP_DEVICE_CUDA)", fn,
         a.device_type);
  if (a.device_type == KVP_DEVICE_CPU && a.device_id != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: metadata device_id must be 0 for host arrays, got %d", fn, a.device_id);
  if (a.device_id < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: metadata device_id %d is negative", fn, a.device_id);
  if (a.page_size < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: metadata page_size %lld is negative", fn, ll(a.page_size));
  if (a.num_reqs < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_reqs %lld is negative", fn, ll(a.num_reqs));
  if (a.pages_per_req < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: pages_per_req %lld is negative", fn, ll(a.pages_per_req));
  if (a.pages_tables == nullptr && checked_mul(a.num_reqs, a.pages_per_req, "pages_tables num_reqs x pages_per_req") != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: pages_tables is NULL but has %lld x %lld entries", fn, ll(a.num_reqs),
         ll(a.pages_per_req));
  check_len(a.context_lens, a.context_lens_len, "context_lens", fn);
  check_len(a.query_start_loc, a.query_start_loc_len, "query_start_loc", fn);
  check_len(a.num_seqs, a.num_seqs_len, "num_seqs", fn);
  if (a.num_slices < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_slices %lld is negative", fn, ll(a.num_slices));
  if (a.num_slices > std::numeric_limits<int64_t>::max() / 3)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_slices %lld is too large", fn, ll(a.num_slices));
  if (a.slot_mapping == nullptr && a.num_slices != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: slot_mapping is NULL but num_slices is %lld", fn, ll(a.num_slices));
  check_len(a.num_kv_update_slices, a.num_kv_update_slices_len, "num_kv_update_slices", fn);
  check_len(a.request_distribution, a.request_distribution_len, "request_distribution", fn);
  check_len(a.position_ids, a.position_ids_len, "position_ids", fn);
  check_len(a.token_starts, a.token_starts_len, "token_starts", fn);
  if (a.token_starts != nullptr && a.token_starts_len != a.num_reqs)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: token_starts has %lld entries but num_reqs is %lld", fn, ll(a.token_starts_len),
         ll(a.num_reqs));
  if (a.token_starts != nullptr && a.device_type != KVP_DEVICE_CPU)
    fail(KVP_ERR_UNSUPPORTED, "%s: token_starts is supported with host metadata only (device_type is CUDA)", fn);

  if (a.context_lens != nullptr && a.context_lens_len != a.num_reqs)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: context_lens has %lld entries but num_reqs is %lld", fn, ll(a.context_lens_len),
         ll(a.num_reqs));
  if (a.query_start_loc != nullptr && a.query_start_loc_len != a.num_reqs + 1)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: query_start_loc has %lld entries but must have num_reqs + 1 = %lld", fn,
         ll(a.query_start_loc_len), ll(a.num_reqs + 1));
  if (a.request_distribution != nullptr && a.request_distribution_len != 3)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: request_distribution has %lld entries but must have 3", fn,
         ll(a.request_distribution_len));

  if (a.version == KVP_LAYOUT_V3) {
    if (a.context_lens == nullptr && a.num_reqs > 0)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: v3 metadata needs context_lens (num_reqs is %lld)", fn, ll(a.num_reqs));
    if (a.query_start_loc == nullptr)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: v3 metadata needs query_start_loc (num_reqs + 1 entries)", fn);
    if (a.request_distribution == nullptr && a.num_seqs == nullptr)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: v3 metadata needs request_distribution or num_seqs", fn);
  } else {
    if (a.num_kv_update_slices == nullptr)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: v2 metadata needs num_kv_update_slices", fn);
  }
}

HostPtr<Metadata> Metadata::borrow(const kvp_metadata_desc& d, const char* fn) {
  if ((d.flags & ~KVP_METADATA_FLAG_IMMUTABLE) != 0)
    fail(KVP_ERR_UNSUPPORTED, "%s: kvp_metadata_desc.flags 0x%x has unknown bits (KVP_METADATA_FLAG_* only)", fn,
         static_cast<unsigned>(d.flags));
  MetadataArrays a;
  a.version = d.version == KVP_LAYOUT_DEFAULT ? KVP_LAYOUT_V3 : d.version;
  a.device_type = d.device_type == 0 ? KVP_DEVICE_CPU : d.device_type;
  a.device_id = d.device_id;
  a.page_size = d.page_size;
  a.num_slices_per_page = d.num_slices_per_kv_cache_update_page;
  a.pages_tables = d.pages_tables;
  a.num_reqs = d.num_reqs;
  a.pages_per_req = d.pages_per_req;
  a.context_lens = d.context_lens;
  a.context_lens_len = d.context_lens_len;
  a.query_start_loc = d.query_start_loc;
  a.query_start_loc_len = d.query_start_loc_len;
  a.num_seqs = d.num_seqs;
  a.num_seqs_len = d.num_seqs_len;
  a.slot_mapping = d.slot_mapping;
  a.num_slices = d.num_slices;
  a.num_kv_update_slices = d.num_kv_update_slices;
  a.num_kv_update_slices_len = d.num_kv_update_slices_len;
  a.request_distribution = d.request_distribution;
  a.request_distribution_len = d.request_distribution_len;
  a.position_ids = d.position_ids;
  a.position_ids_len = d.position_ids_len;
  a.token_starts = d.token_starts;
  a.token_starts_len = d.token_starts_len;
  check_metadata_structure(a, fn);
  const HostAllocator alloc;
  HostPtr<Metadata> m = make_host<Metadata>(alloc, alloc);
  m->a_ = a;
  m->immutable_ = (d.flags & KVP_METADATA_FLAG_IMMUTABLE) != 0;
  return m;
}

void Metadata::allocate(const MetadataArrays& s) {
  MetadataArrays a = s;
  const int64_t n_pt = checked_mul(a.num_reqs, a.pages_per_req, "metadata pages_tables entries");
  const int64_t lens[9] = {n_pt,
                           a.context_lens_len,
                           a.query_start_loc_len,
                           a.num_seqs_len,
                           checked_mul(3, a.num_slices, "metadata slot_mapping entries"),
                           a.num_kv_update_slices_len,
                           a.request_distribution_len,
                           a.position_ids_len,
                           a.token_starts_len};
  int64_t total = 0;
  for (int64_t l : lens) {
    if (l < 0) fail(KVP_ERR_INVALID_ARGUMENT, "metadata: negative array length %lld", ll(l));
    total = checked_add(total, l, "metadata entries");
    if (total > (int64_t(1) << 40)) fail(KVP_ERR_INVALID_ARGUMENT, "metadata: arrays too large (%lld entries)", ll(total));
  }
  storage_.assign(static_cast<size_t>(total), 0);
  int32_t* base = storage_.data();
  int64_t off = 0;
  auto take = [&](int64_t len) -> const int32_t* {
    if (len == 0) return nullptr;
    const int32_t* p = base + off;
    off += len;
    return p;
  };
  a.pages_tables = take(lens[0]);
  a.context_lens = take(lens[1]);
  a.query_start_loc = take(lens[2]);
  a.num_seqs = take(lens[3]);
  a.slot_mapping = take(lens[4]);
  a.num_kv_update_slices = take(lens[5]);
  a.request_distribution = take(lens[6]);
  a.position_ids = take(lens[7]);
  a.token_starts = take(lens[8]);
  a.device_type = KVP_DEVICE_CPU;
  a.device_id = 0;
  a_ = a;
  immutable_ = true;  // the handle's own arrays: the C API hands out const pointers only
}

HostPtr<Metadata> Metadata::empty(kvp_layout version, int64_t num_tokens, int64_t max_num_reqs, int64_t max_pages,
                          int64_t page_size, const char* fn, bool with_token_starts) {
  const kvp_layout v = version == KVP_LAYOUT_DEFAULT ? KVP_LAYOUT_V3 : version;
  if (v != KVP_LAYOUT_V2 && v != KVP_LAYOUT_V3)
    fail(KVP_ERR_NOT_FOUND, "%s: unknown layout version %u (expected v2 or v3)", fn, static_cast<unsigned>(version));
  const int64_t kMax = std::numeric_limits<int32_t>::max();
  if (num_tokens < 0 || num_tokens > kMax)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_tokens %lld is out of range [0, %lld]", fn, ll(num_tokens), ll(kMax));
  if (max_num_reqs < 0 || max_num_reqs >= kMax)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: max_num_reqs %lld is out of range [0, %lld)", fn, ll(max_num_reqs), ll(kMax));
  if (max_pages < 0 || max_pages > kMax)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: max_pages %lld is out of range [0, %lld]", fn, ll(max_pages), ll(kMax));
  if (checked_mul(max_num_reqs, max_pages, "max_num_reqs x max_pages") > (int64_t(1) << 32))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: page table %lld x %lld is too large", fn, ll(max_num_reqs), ll(max_pages));
  if (page_size < 0 || page_size > kMax)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: page_size %lld is out of range", fn, ll(page_size));
  MetadataArrays s;
  s.version = v;
  s.page_size = page_size;
  s.num_reqs = max_num_reqs;
  s.pages_per_req = max_pages;
  s.context_lens_len = max_num_reqs;
  s.query_start_loc_len = max_num_reqs + 1;
  s.num_seqs_len = 1;
  s.position_ids_len = num_tokens;
  if (with_token_starts) s.token_starts_len = max_num_reqs;
  if (v == KVP_LAYOUT_V2) {
    s.num_slices = num_tokens;
    s.num_kv_update_slices_len = 1;
  } else {
    s.request_distribution_len = 3;
  }
  const HostAllocator alloc;
  HostPtr<Metadata> m = make_host<Metadata>(alloc, alloc);
  m->allocate(s);
  // allocate() returns nullptr for empty arrays; a zero-row v3 metadata still needs the
  // (non-empty) query_start_loc, which always has >= 1 entry, so the structure holds.
  check_metadata_structure(m->a_, fn);
  return m;
}

}  // namespace kvp::detail
