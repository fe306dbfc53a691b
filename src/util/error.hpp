// Internal error model: kvp::detail::error carries a status and a message; the API guard turns
// it (and any other exception) into a kvp_status plus the thread-local message.
#pragma once

#include <cstdarg>
#include <cstdint>
#include <exception>
#include <new>
#include <string>

#include "kvpages/status.h"

namespace kvp::detail {

class error : public std::exception {
 public:
  error(kvp_status code, std::string message) : code_(code), message_(std::move(message)) {}
  kvp_status code() const noexcept { return code_; }
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  kvp_status code_;
  std::string message_;
};

// printf-style formatting into a std::string.
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string vformat(const char* fmt, va_list ap);

// Throws kvp::detail::error(code, formatted message).
[[noreturn]] void fail(kvp_status code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// An int64_t for a %lld in fail()'s format.
inline long long ll(int64_t v) { return static_cast<long long>(v); }

// Name of a status code ("KVP_ERR_UNKNOWN" for codes the library does not know).
const char* status_name(kvp_status status) noexcept;

// Thread-local last-error message (never null; empty when the last call succeeded).
const char* last_error_message() noexcept;
void clear_last_error() noexcept;
kvp_status set_last_error(kvp_status code, const char* message) noexcept;
kvp_status set_last_errorf(kvp_status code, const char* fmt, ...) noexcept
    __attribute__((format(printf, 2, 3)));

// Maps the in-flight exception to a status and sets the message. Call only from a catch block.
kvp_status status_from_current_exception(const char* function) noexcept;

}  // namespace kvp::detail

// Every extern "C" entry point is noexcept and wraps its body in these two macros:
//   kvp_status kvp_x(...) noexcept { KVP_API_BEGIN; ...; KVP_API_END; }
// The body may `return` a status itself; falling off the end returns KVP_OK.
#define KVP_API_BEGIN                  \
  try {                                \
    ::kvp::detail::clear_last_error(); \
    do {                               \
    } while (0)

#define KVP_API_END                                                   \
  return KVP_OK;                                                      \
  }                                                                   \
  catch (...) {                                                       \
    return ::kvp::detail::status_from_current_exception(__func__);   \
  }                                                                   \
  do {                                                                \
  } while (0)

// Argument checks used by the shims.
#define KVP_REQUIRE_NOT_NULL(ptr)                                                       \
  do {                                                                                  \
    if ((ptr) == nullptr)                                                               \
      ::kvp::detail::fail(KVP_ERR_INVALID_ARGUMENT, "%s: '%s' must not be NULL", __func__, #ptr); \
  } while (0)
