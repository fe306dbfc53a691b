#include "backend/backend.hpp"

#include "util/error.hpp"

namespace kvp::detail {

void Backend::set_async_error(kvp_status code, std::string message, bool sticky) {
  std::lock_guard<std::mutex> lock(async_mu_);
  if (async_code_ != KVP_OK && async_sticky_) return;  // keep the first sticky fault
  async_code_ = code;
  async_sticky_ = sticky;
  async_message_ = std::move(message);
  async_pending_.store(code != KVP_OK, std::memory_order_release);
}

kvp_status Backend::async_error(std::string* message) {
  poll_device();
  std::lock_guard<std::mutex> lock(async_mu_);
  if (message != nullptr) *message = async_message_;
  return async_code_;
}

bool Backend::clear_async_error() {
  poll_device();
  {
    std::lock_guard<std::mutex> lock(async_mu_);
    if (async_code_ != KVP_OK && async_sticky_) return false;
    if (async_code_ == KVP_OK) return true;
    async_code_ = KVP_OK;
    async_message_.clear();
    async_pending_.store(false, std::memory_order_release);
  }
  reset_device_errors();
  return true;
}

void Backend::check_healthy(const char* function) const {
  if (!async_pending_.load(std::memory_order_acquire)) return;  // every call's path: no lock
  std::lock_guard<std::mutex> lock(async_mu_);
  if (async_code_ != KVP_OK)
    fail(KVP_ERR_DEVICE_LOST, "%s: the cache has a pending asynchronous error (%s: %s); read it with "
         "kvp_cache_get_async_error%s", function, status_name(async_code_), async_message_.c_str(),
         async_sticky_ ? " and destroy the cache" : " and clear it with kvp_cache_clear_async_error");
}

}  // namespace kvp::detail
