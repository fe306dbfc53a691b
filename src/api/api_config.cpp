// kvp_config_* shims: validate arguments, run the core, map errors.
#include <cstring>

#include "backend/backend.hpp"
#include "core/config.hpp"
#include "kvpages/config.h"
#include "util/error.hpp"
#include "util/options.hpp"

using namespace kvp::detail;

extern "C" {

KVP_API kvp_status kvp_config_init(kvp_config* cfg, uint32_t struct_size) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(cfg);
  check_struct_size(struct_size, kConfigV1Size, "kvp_config_init", "kvp_config");
  // A struct_size below version 2's is a 1.0–1.2 caller's record: version 1 of it.
  write_config(cfg, KVP_CONFIG_INIT, struct_size >= sizeof(kvp_config));
  KVP_API_END;
}

KVP_API kvp_status kvp_config_validate(const kvp_config* cfg) {
  KVP_API_BEGIN;
  const kvp_config c = read_config(cfg, "kvp_config_validate");
  validate_config(c, "kvp_config_validate");
  KVP_API_END;
}

KVP_API kvp_status kvp_hbm_budget_bytes(const kvp_memory_stats* stats, uint32_t num_stats, double utilization,
                                        uint32_t mode, int64_t safety_margin_bytes, int64_t* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = hbm_budget_bytes(stats, num_stats, utilization, mode, safety_margin_bytes);
  KVP_API_END;
}

KVP_API kvp_status kvp_device_memory_stats(kvp_device_type device_type, int32_t device_id, kvp_memory_stats* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  kvp_memory_stats s;
  device_memory_stats(device_type, device_id, &s);
  *out = s;
  KVP_API_END;
}

KVP_API kvp_status kvp_config_options_init(kvp_config_options* opts, uint32_t struct_size) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(opts);
  init_versioned(opts, struct_size, kConfigOptionsV1Size, KVP_CONFIG_OPTIONS_VERSION, "kvp_config_options_init",
                 "kvp_config_options");
  KVP_API_END;
}

KVP_API kvp_status kvp_config_create(const kvp_config_options* opts, kvp_config* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(opts);
  KVP_REQUIRE_NOT_NULL(out);
  const kvp_config_options o =
      read_versioned(opts, kConfigOptionsV1Size, KVP_CONFIG_OPTIONS_VERSION, "kvp_config_create", "kvp_config_options");
  // Version 2 of the record for a caller who opted in, by its options (built with 1.3 headers)
  // or by the record; a 1.0–1.2 caller's options and record are version 1.
  const bool v2 = opts->struct_size >= sizeof(kvp_config_options) || config_wants_v2(out);
  write_config(out, create_config(o, "kvp_config_create"), v2);
  KVP_API_END;
}

KVP_API kvp_status kvp_config_get_layout(const kvp_config* cfg, kvp_layout_info* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  const kvp_config c = read_config(cfg, "kvp_config_get_layout");
  const kvp_layout_info li = layout_info_of(layout_of(c, "kvp_config_get_layout"));
  write_versioned(out, li, sizeof(kvp_layout_info), "kvp_config_get_layout", "kvp_layout_info");
  KVP_API_END;
}

KVP_API kvp_status kvp_config_padded_num_slices(const kvp_config* cfg, int64_t num_tokens, int64_t max_num_reqs,
                                                int64_t* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  const kvp_config c = read_config(cfg, "kvp_config_padded_num_slices");
  *out = padded_num_slices(c, num_tokens, max_num_reqs, "kvp_config_padded_num_slices");
  KVP_API_END;
}

KVP_API kvp_status kvp_config_plan(const kvp_config* cfg, kvp_plan* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  const kvp_config c = read_config(cfg, "kvp_config_plan");
  const kvp_plan p = plan_of(c, "kvp_config_plan");
  check_struct_size(out->struct_size, kPlanV1Size, "kvp_config_plan", "kvp_plan");
  write_grown(out, p, out->struct_size == sizeof(kvp_plan), kPlanV1Size);
  KVP_API_END;
}

}  // extern "C"
