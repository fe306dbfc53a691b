/* libFuzzer target for kvp_config_from_json. Whatever the text, the call returns a status. A
 * config it reads writes back to JSON that reads as the same config and writes the same text
 * again (a fixed point), and a config that kvp_config_validate() accepts also has a layout
 * (kvp_config_get_layout(): validation rejects what the layout rejects). */
#include <stdint.h>
#include <string.h>

#include "harness.h"
#include "kvpages.h"

static int same_config(const kvp_config *a, const kvp_config *b) {
  return a->num_hidden_layers == b->num_hidden_layers && a->max_model_length == b->max_model_length &&
         a->num_kv_heads == b->num_kv_heads && a->k_headdim == b->k_headdim && a->v_headdim == b->v_headdim &&
         memcmp(&a->hbm_utilization, &b->hbm_utilization, sizeof(double)) == 0 && a->page_size == b->page_size &&
         a->num_pages == b->num_pages && a->max_num_pages_per_req == b->max_num_pages_per_req &&
         a->num_slices_per_kv_cache_update_page == b->num_slices_per_kv_cache_update_page &&
         a->max_num_tokens == b->max_num_tokens && a->max_num_reqs == b->max_num_reqs && a->version == b->version &&
         a->kvdtype == b->kvdtype && a->data_parallel_size == b->data_parallel_size &&
         a->kv_head_shards == b->kv_head_shards && a->requested_kv_head_shards == b->requested_kv_head_shards &&
         a->requested_kvdtype == b->requested_kvdtype;
}

/* The JSON of cfg in `text` (cap bytes); returns its length. */
static size_t write_json(const kvp_config *cfg, char *text, size_t cap) {
  size_t len = 0;
  const kvp_status st = kvp_config_to_json(cfg, text, cap, &len);
  kvp_fuzz_check(st == KVP_OK, "kvp_config_to_json of a config read from JSON: %s", kvp_status_name(st));
  kvp_fuzz_check(len < cap && text[len] == '\0', "kvp_config_to_json: length %zu, no NUL", len);
  return len;
}

static void check_round_trip(const kvp_config *cfg) {
  char text[4096], again[4096];
  const size_t len = write_json(cfg, text, sizeof text);
  kvp_config back = KVP_CONFIG_INIT; /* version 2: the sharding keys travel too */
  const kvp_status st = kvp_config_from_json(text, len, &back);
  kvp_fuzz_check(st == KVP_OK, "kvp_config_from_json of its own output %s: %s", text, kvp_status_name(st));
  kvp_fuzz_check(same_config(cfg, &back), "config changed in a JSON round trip: %s", text);
  const size_t len2 = write_json(&back, again, sizeof again);
  kvp_fuzz_check(len2 == len && memcmp(text, again, len) == 0, "JSON text is not a fixed point:\n%s\n%s", text, again);
}

static void check_validate_agrees_with_layout(const kvp_config *cfg) {
  if (kvp_config_validate(cfg) != KVP_OK) return;
  kvp_layout_info li;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  const kvp_status st = kvp_config_get_layout(cfg, &li);
  kvp_fuzz_check(st == KVP_OK, "kvp_config_validate accepts a config whose layout is rejected: %s",
                 kvp_status_name(st));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kvp_config cfg;
  memset(&cfg, 0x5A, sizeof cfg);
  cfg.struct_size = sizeof cfg; /* opting in to version 2 */
  cfg.abi_version = KVP_CONFIG_VERSION;
  const kvp_status st = kvp_config_from_json((const char *)data, size, &cfg);
  if (st != KVP_OK) {
    kvp_fuzz_check(st == KVP_ERR_INVALID_ARGUMENT || st == KVP_ERR_NOT_FOUND || st == KVP_ERR_OUT_OF_MEMORY,
                   "kvp_config_from_json: undocumented status %s", kvp_status_name(st));
    kvp_fuzz_check(kvp_last_error_message()[0] != '\0', "kvp_config_from_json failed without a message");
    kvp_config untouched;
    memset(&untouched, 0x5A, sizeof untouched);
    untouched.struct_size = sizeof untouched;
    untouched.abi_version = KVP_CONFIG_VERSION;
    kvp_fuzz_check(memcmp(&cfg, &untouched, sizeof cfg) == 0, "kvp_config_from_json wrote its output on failure");
    return 0;
  }
  check_round_trip(&cfg);
  check_validate_agrees_with_layout(&cfg);
  return 0;
}
