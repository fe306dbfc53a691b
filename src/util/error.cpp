#include "util/error.hpp"

#include <cstdio>
#include <cstring>
#include <vector>

namespace kvp::detail {
namespace {
// Fixed-size thread-local buffer: setting a message never allocates, so reporting an
// out-of-memory error cannot itself fail.
constexpr size_t kMessageCap = 1024;
thread_local char t_message[kMessageCap] = {0};
}  // namespace

std::string vformat(const char* fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  char small[256];
  int n = std::vsnprintf(small, sizeof small, fmt, ap);
  if (n < 0) {
    va_end(ap2);
    return std::string(fmt);
  }
  if (static_cast<size_t>(n) < sizeof small) {
    va_end(ap2);
    return std::string(small, static_cast<size_t>(n));
  }
  std::string out(static_cast<size_t>(n) + 1, '\0');
  std::vsnprintf(out.data(), out.size(), fmt, ap2);
  va_end(ap2);
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string format(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  return s;
}

void fail(kvp_status code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  throw error(code, std::move(s));
}

void clear_last_error() noexcept { t_message[0] = '\0'; }

kvp_status set_last_error(kvp_status code, const char* message) noexcept {
  if (message == nullptr || message[0] == '\0') message = status_name(code);
  std::snprintf(t_message, kMessageCap, "%s", message);
  return code;
}

kvp_status set_last_errorf(kvp_status code, const char* fmt, ...) noexcept {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(t_message, kMessageCap, fmt, ap);
  va_end(ap);
  return code;
}

kvp_status status_from_current_exception(const char* function) noexcept {
  try {
    throw;
  } catch (const error& e) {
    return set_last_error(e.code(), e.what());
  } catch (const std::bad_alloc&) {
    return set_last_errorf(KVP_ERR_OUT_OF_MEMORY, "%s: out of host memory", function);
  } catch (const std::exception& e) {
    return set_last_errorf(KVP_ERR_INTERNAL, "%s: internal error: %s", function, e.what());
  } catch (...) {
    return set_last_errorf(KVP_ERR_INTERNAL, "%s: internal error: unknown exception", function);
  }
}

const char* status_name(kvp_status status) noexcept {
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

const char* last_error_message() noexcept { return t_message; }

}  // namespace kvp::detail
