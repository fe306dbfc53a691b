// Reading caller-owned, size-versioned structs (STYLE.md §4.5): copy min(struct_size, ours),
// default the rest, reject unknown versions and non-zero unknown tails.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "util/error.hpp"

namespace kvp::detail {

// Rejects a caller struct whose struct_size is below version 1 of the struct, saying what to set.
inline void check_struct_size(uint32_t struct_size, size_t v1_size, const char* function, const char* type_name) {
  if (struct_size < v1_size)
    fail(KVP_ERR_VERSION_MISMATCH,
         "%s: %s.struct_size is %u, smaller than version 1 of the struct (%zu bytes): set struct_size = sizeof(%s)",
         function, type_name, struct_size, v1_size, type_name);
}

// `in` must be non-null. `v1_size` is the size of version 1 of the struct.
template <class T>
T read_versioned(const T* in, size_t v1_size, uint32_t current_version, const char* function,
                 const char* type_name) {
  const uint32_t sz = in->struct_size;
  check_struct_size(sz, v1_size, function, type_name);
  if (in->abi_version == 0 || in->abi_version > current_version)
    fail(KVP_ERR_VERSION_MISMATCH, "%s: %s.abi_version %u is not supported (this library knows 1..%u)",
         function, type_name, in->abi_version, current_version);
  if (sz > sizeof(T)) {
    const auto* bytes = reinterpret_cast<const unsigned char*>(in);
    for (size_t i = sizeof(T); i < sz; ++i)
      if (bytes[i] != 0)
        fail(KVP_ERR_UNSUPPORTED,
             "%s: %s is %u bytes and its tail beyond the %zu bytes this library knows is not zero "
             "(a newer feature this library does not support)",
             function, type_name, sz, sizeof(T));
  }
  T out;
  std::memset(&out, 0, sizeof out);
  std::memcpy(&out, in, sz < sizeof(T) ? sz : sizeof(T));
  out.struct_size = static_cast<uint32_t>(sizeof(T));
  return out;
}

// Writes a result struct into a caller struct whose struct_size says how much it can hold.
template <class T>
void write_versioned(T* out, const T& value, size_t v1_size, const char* function, const char* type_name) {
  const uint32_t sz = out->struct_size;
  check_struct_size(sz, v1_size, function, type_name);
  std::memcpy(out, &value, sz < sizeof(T) ? sz : sizeof(T));
  out->struct_size = sz;
}

// Writes a result struct that grew since version 1 into a caller's struct, which may predate the
// growth (and, for a record such as kvp_config, be uninitialised): the whole current version only
// when `current` (the caller opted in before the call by setting struct_size — and abi_version
// where the struct has one — to exactly the current version's), else only the `v1_size` bytes of
// version 1. struct_size says which was written (docs/abi-policy.md, "Output structs").
template <class T>
void write_grown(T* out, T value, bool current, size_t v1_size) {
  const size_t n = current ? sizeof(T) : v1_size;
  value.struct_size = static_cast<uint32_t>(n);
  std::memcpy(out, &value, n);
}

// Fills a caller struct with zeros, its size and version (the *_init functions).
template <class T>
void init_versioned(T* out, uint32_t struct_size, size_t v1_size, uint32_t version, const char* function,
                    const char* type_name) {
  check_struct_size(struct_size, v1_size, function, type_name);
  std::memset(out, 0, struct_size < sizeof(T) ? struct_size : sizeof(T));
  out->struct_size = struct_size < sizeof(T) ? struct_size : static_cast<uint32_t>(sizeof(T));
  out->abi_version = version;
}

}  // namespace kvp::detail
