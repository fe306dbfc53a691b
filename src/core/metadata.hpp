// Runtime metadata (SPEC.md §4): a plain view of int32 arrays (borrowed from the caller, or
// owned in `storage_`) plus the handle that carries it through the C API.
#pragma once

#include <cstdint>
#include <vector>

#include "kvpages/metadata.h"
#include "util/handle.hpp"

namespace kvp::detail {

// Plain description of the arrays; pointers may be host or device memory (`device_type`).
// Lengths are in elements; absent arrays are nullptr with length 0. Usable in device code.
struct MetadataArrays {
  kvp_layout version = KVP_LAYOUT_V3;
  kvp_device_type device_type = KVP_DEVICE_CPU;
  int32_t device_id = 0;
  int64_t page_size = 0;  // 0 = the cache's
  int64_t num_slices_per_page = -1;
  const int32_t* pages_tables = nullptr;
  int64_t num_reqs = 0;
  int64_t pages_per_req = 0;
  const int32_t* context_lens = nullptr;
  int64_t context_lens_len = 0;
  const int32_t* query_start_loc = nullptr;
  int64_t query_start_loc_len = 0;
  const int32_t* num_seqs = nullptr;
  int64_t num_seqs_len = 0;
  const int32_t* slot_mapping = nullptr;  // [3, num_slices] row-major
  int64_t num_slices = 0;
  const int32_t* num_kv_update_slices = nullptr;
  int64_t num_kv_update_slices_len = 0;
  const int32_t* request_distribution = nullptr;
  int64_t request_distribution_len = 0;
  const int32_t* position_ids = nullptr;
  int64_t position_ids_len = 0;
};

class Metadata {
 public:
  // Borrowed: checks the structure and keeps the caller's pointers.
  static Metadata* borrow(const kvp_metadata_desc& desc, const char* function);
  // Owning, all zero (consistent create_empty shapes).
  static Metadata* empty(kvp_layout version, int64_t num_tokens, int64_t max_num_reqs,
                         int64_t max_pages, int64_t page_size, const char* function);

  // Owning storage: call `allocate` with every length set in `a` (pointers ignored), then fill
  // through the mutable accessors; pointers are (re)set to the storage.
  Metadata() = default;
  void allocate(const MetadataArrays& shape);
  int32_t* mut(const int32_t* p) { return const_cast<int32_t*>(p); }

  const MetadataArrays& arrays() const noexcept { return a_; }
  MetadataArrays& arrays_mut() noexcept { return a_; }
  bool owning() const noexcept { return !storage_.empty() || owning_; }

 private:
  MetadataArrays a_;
  std::vector<int32_t> storage_;
  bool owning_ = false;
};

// Structure checks shared by borrow() and the builder (lengths, required arrays of the version).
void check_metadata_structure(const MetadataArrays& a, const char* function);

}  // namespace kvp::detail

struct kvp_metadata {
  kvp::detail::handle_header hdr;
  kvp::detail::Metadata* impl;
};

namespace kvp::detail {
// Validates a metadata handle (NULL, registry, magic); throws INVALID_HANDLE.
const Metadata& metadata_from(const kvp_metadata* h, const char* function);
// Wraps an implementation in a new registered handle (takes ownership; deletes it on failure).
kvp_metadata* metadata_handle_new(Metadata* impl);
}  // namespace kvp::detail
