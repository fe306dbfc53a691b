// kvp_config_* / kvp_metadata_* JSON shims.
#include <cstring>

#include "core/config.hpp"
#include "core/json.hpp"
#include "kvpages/json.h"
#include "util/error.hpp"

using namespace kvp::detail;

namespace {

// Hands JSON text to the caller: the text and its NUL into buf, or the size it needs.
void copy_text(const HostString& s, char* buf, size_t cap, size_t* written_out, const char* fn) {
  if (cap < s.size() + 1) {
    *written_out = s.size() + 1;
    fail(KVP_ERR_BUFFER_TOO_SMALL, "%s: the text needs %zu bytes with its NUL but cap is %zu", fn, s.size() + 1, cap);
  }
  std::memcpy(buf, s.c_str(), s.size() + 1);
  *written_out = s.size();
}

}  // namespace

extern "C" {

KVP_API kvp_status kvp_config_to_json(const kvp_config* cfg, char* buf, size_t cap, size_t* written_out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(written_out);
  if (buf == nullptr && cap != 0) fail(KVP_ERR_INVALID_ARGUMENT, "kvp_config_to_json: buf is NULL but cap is %zu", cap);
  const kvp_config c = read_config(cfg, "kvp_config_to_json");
  copy_text(json::config_to_json(c, "kvp_config_to_json"), buf, cap, written_out, "kvp_config_to_json");
  KVP_API_END;
}

KVP_API kvp_status kvp_config_from_json(const char* json_text, size_t len, kvp_config* out) {
  KVP_API_BEGIN;
  if (json_text == nullptr) fail(KVP_ERR_INVALID_ARGUMENT, "kvp_config_from_json: 'json' must not be NULL");
  KVP_REQUIRE_NOT_NULL(out);
  write_config(out, json::config_from_json(json_text, len, "kvp_config_from_json"), config_wants_v2(out));
  KVP_API_END;
}

KVP_API kvp_status kvp_metadata_to_json(const kvp_metadata* metadata, char* buf, size_t cap, size_t* written_out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(written_out);
  if (buf == nullptr && cap != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_metadata_to_json: buf is NULL but cap is %zu", cap);
  copy_text(json::metadata_to_json(metadata, "kvp_metadata_to_json"), buf, cap, written_out, "kvp_metadata_to_json");
  KVP_API_END;
}

KVP_API kvp_status kvp_metadata_from_json(const char* json_text, size_t len, kvp_metadata** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  if (json_text == nullptr) fail(KVP_ERR_INVALID_ARGUMENT, "kvp_metadata_from_json: 'json' must not be NULL");
  *out = json::metadata_from_json(json_text, len, "kvp_metadata_from_json");
  KVP_API_END;
}

}  // extern "C"
