// Status names, the thread-local error message, the misuse handler, version queries and the ABI
// check.
#include <cstdio>
#include <cstring>

#include "backend/backend.hpp"
#include "core/store.hpp"
#include "kvpages/status.h"
#include "kvpages/version.h"
#include "util/cpu_features.hpp"
#include "util/error.hpp"
#include "util/handle.hpp"
#include "util/thread_pool.hpp"

extern "C" {

KVP_API const char* kvp_status_name(kvp_status status) { return kvp::detail::status_name(status); }

KVP_API const char* kvp_last_error_message(void) { return kvp::detail::last_error_message(); }

KVP_API size_t kvp_last_error_copy(char* buf, size_t cap) {
  const char* m = kvp::detail::last_error_message();
  const size_t n = std::strlen(m);
  if (buf != nullptr && cap > 0) {
    const size_t k = n < cap - 1 ? n : cap - 1;
    std::memcpy(buf, m, k);
    buf[k] = '\0';
  }
  return n;
}

KVP_API void kvp_set_misuse_handler(kvp_misuse_fn fn, void* user_data) {
  kvp::detail::set_misuse_handler(fn, user_data);
}

KVP_API uint32_t kvp_version_number(void) {
  kvp::detail::clear_last_error();
  return KVP_VERSION_NUMBER;
}

KVP_API const char* kvp_version_string(void) {
  kvp::detail::clear_last_error();
  return KVP_VERSION_STRING;
}

#if defined(KVP_API_ARMOR)
#define KVP_ARMOR_STR "on"
#else
#define KVP_ARMOR_STR "off"
#endif

KVP_API const char* kvp_build_info(void) {
  kvp::detail::clear_last_error();
  // Built once (thread-safe static initialisation, no allocation); the ISA level is fixed for
  // the process.
  static char info[256];
  static const bool built = [] {
    std::snprintf(info, sizeof info, "%s cuda=%s threads=%d api_armor=%s redis=%s cpu=%s",
                  "kvpages " KVP_VERSION_STRING " (" KVP_GIT_SHA ") " KVP_COMPILER_ID,
                  kvp::detail::cuda_backend_kind(), kvp::detail::ThreadPool::instance().max_threads(),
                  KVP_ARMOR_STR, kvp::detail::redis_store_built() ? "on" : "off",
                  kvp::detail::cpu_isa_name(kvp::detail::cpu_isa()));
    return true;
  }();
  (void)built;
  return info;
}

KVP_API kvp_status kvp_check_abi(uint32_t header_version_number) {
  KVP_API_BEGIN;
  const uint32_t header_major = header_version_number / 10000u;
  if (header_major != KVP_VERSION_MAJOR)
    kvp::detail::fail(KVP_ERR_VERSION_MISMATCH,
                      "kvp_check_abi: header major version %u differs from library major version %u",
                      header_major, static_cast<unsigned>(KVP_VERSION_MAJOR));
  if (header_version_number > KVP_VERSION_NUMBER)
    kvp::detail::fail(KVP_ERR_VERSION_MISMATCH,
                      "kvp_check_abi: headers %u are newer than the library %u",
                      header_version_number, static_cast<unsigned>(KVP_VERSION_NUMBER));
  KVP_API_END;
}

}  // extern "C"
