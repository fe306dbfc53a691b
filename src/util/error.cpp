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
  if (message == nullptr || message[0] == '\0') message = kvp_status_name(code);
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

}  // namespace kvp::detail

extern "C" {

KVP_API const char* kvp_last_error_message(void) { return kvp::detail::t_message; }

KVP_API size_t kvp_last_error_copy(char* buf, size_t cap) {
  size_t n = std::strlen(kvp::detail::t_message);
  if (buf != nullptr && cap > 0) {
    size_t m = n < cap - 1 ? n : cap - 1;
    std::memcpy(buf, kvp::detail::t_message, m);
    buf[m] = '\0';
  }
  return n;
}

}  // extern "C"
