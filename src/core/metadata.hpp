// Runtime metadata (SPEC.md §4): a plain view of int32 arrays (borrowed from the caller, or
// owned in `storage_`) plus the handle that carries it through the C API. Metadata whose arrays
// cannot change while the handle lives (owning, or borrowed with KVP_METADATA_FLAG_IMMUTABLE)
// keeps the plans validated against the caches it is used with (core/plan.hpp).
#pragma once

#include <cstdint>

#include "backend/jobs.hpp"
#include "core/plan.hpp"
#include "kvpages/metadata.h"
#include "util/handle.hpp"
#include "util/memory.hpp"

namespace kvp::detail {

class Metadata {
 public:
  // Borrowed: checks the structure and keeps the caller's pointers. Process default allocator.
  static HostPtr<Metadata> borrow(const kvp_metadata_desc& desc, const char* function);
  // Owning, all zero (consistent create_empty shapes), with a token_starts array when asked.
  // Process default allocator.
  static HostPtr<Metadata> empty(kvp_layout version, int64_t num_tokens, int64_t max_num_reqs,
                                 int64_t max_pages, int64_t page_size, const char* function,
                                 bool with_token_starts = false);

  // Owning storage: call `allocate` with every length set in `a` (pointers ignored), then fill
  // through mut(); pointers are (re)set to the storage.
  explicit Metadata(const HostAllocator& alloc) : storage_(alloc), plans_(alloc) {}
  void allocate(const MetadataArrays& shape);
  int32_t* mut(const int32_t* p) { return const_cast<int32_t*>(p); }

  const MetadataArrays& arrays() const noexcept { return a_; }
  // The arrays cannot change while the handle lives: owning storage, or the caller's promise.
  bool immutable() const noexcept { return immutable_; }
  // The plans kept for host metadata that is immutable() (empty otherwise).
  const PlanStore& plans() const noexcept { return plans_; }

 private:
  MetadataArrays a_;
  HostVector<int32_t> storage_;
  bool immutable_ = false;
  PlanStore plans_;
};

// Structure checks shared by borrow() and the builder (lengths, required arrays of the version).
void check_metadata_structure(const MetadataArrays& a, const char* function);

}  // namespace kvp::detail

struct kvp_metadata : kvp::detail::Handle<kvp::detail::Metadata, kvp::detail::kMagicMetadata> {};

namespace kvp::detail {
// Validates a metadata handle (NULL, registry, magic); throws INVALID_HANDLE.
inline const Metadata& metadata_from(const kvp_metadata* h, const char* function) { return handle_get(h, function); }
}  // namespace kvp::detail
