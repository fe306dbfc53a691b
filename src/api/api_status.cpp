// Status names, version queries and the ABI check.
#include <cstdio>

#include "kvpages/features.h"
#include "kvpages/status.h"
#include "kvpages/version.h"
#include "core/concat.hpp"
#include "util/error.hpp"

extern "C" {

KVP_API const char* kvp_status_name(kvp_status status) {
  switch (status) {
    case KVP_OK: return "KVP_OK";
    case KVP_ERR_INVALID_ARGUMENT: return "KVP_ERR_INVALID_ARGUMENT";
    case KVP_ERR_INVALID_HANDLE: return "KVP_ERR_INVALID_HANDLE";
    case KVP_ERR_NOT_FOUND: return "KVP_ERR_NOT_FOUND";
    case KVP_ERR_VERSION_MISMATCH: return "KVP_ERR_VERSION_MISMATCH";
    case KVP_ERR_UNSUPPORTED: return "KVP_ERR_UNSUPPORTED";
    case KVP_ERR_BUFFER_TOO_SMALL: return "KVP_ERR_BUFFER_TOO_SMALL";
    case KVP_ERR_OUT_OF_MEMORY: return "KVP_ERR_OUT_OF_MEMORY";
    case KVP_ERR_OUT_OF_PAGES: return "KVP_ERR_OUT_OF_PAGES";
    case KVP_ERR_IO: return "KVP_ERR_IO";
    case KVP_ERR_DEVICE: return "KVP_ERR_DEVICE";
    case KVP_ERR_DEVICE_LOST: return "KVP_ERR_DEVICE_LOST";
    case KVP_ERR_NO_DEVICE: return "KVP_ERR_NO_DEVICE";
    case KVP_ERR_DEVICE_OUT_OF_MEMORY: return "KVP_ERR_DEVICE_OUT_OF_MEMORY";
    case KVP_ERR_FORMAT_MAGIC: return "KVP_ERR_FORMAT_MAGIC";
    case KVP_ERR_FORMAT_VERSION: return "KVP_ERR_FORMAT_VERSION";
    case KVP_ERR_FORMAT_TRUNCATED: return "KVP_ERR_FORMAT_TRUNCATED";
    case KVP_ERR_FORMAT_CHECKSUM: return "KVP_ERR_FORMAT_CHECKSUM";
    case KVP_ERR_FORMAT_CORRUPT: return "KVP_ERR_FORMAT_CORRUPT";
    case KVP_ERR_FORMAT_MISMATCH: return "KVP_ERR_FORMAT_MISMATCH";
    case KVP_ERR_INTERNAL: return "KVP_ERR_INTERNAL";
    default: return "KVP_ERR_UNKNOWN";
  }
}

KVP_API uint32_t kvp_version_number(void) {
  kvp::detail::clear_last_error();
  return KVP_VERSION_NUMBER;
}

KVP_API const char* kvp_version_string(void) {
  kvp::detail::clear_last_error();
  return KVP_VERSION_STRING;
}

#if defined(_OPENMP)
#define KVP_OPENMP_STR "on"
#else
#define KVP_OPENMP_STR "off"
#endif
#if KVP_HAS_CUDA
#define KVP_CUDA_STR "on"
#else
#define KVP_CUDA_STR "off"
#endif
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
    std::snprintf(info, sizeof info, "%s cpu=%s",
                  "kvpages " KVP_VERSION_STRING " (" KVP_GIT_SHA ") " KVP_COMPILER_ID " cuda=" KVP_CUDA_STR
                  " openmp=" KVP_OPENMP_STR " api_armor=" KVP_ARMOR_STR,
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
