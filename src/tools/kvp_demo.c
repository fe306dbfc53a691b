/* `kvp demo`: the README's main job. Plans a cache for a real model shape on the CPU, creates it
 * and prints its geometry and memory. (The serving loop grows here.) */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "kvp_tool.h"

int kvp_cmd_demo(int argc, char **argv) {
  kvp_config_options o;
  kvp_config cfg;
  kvp_cache *cache = NULL;
  kvp_tensor keys;
  (void)argc;
  (void)argv;
  printf("%s\n\n", kvp_build_info());
  /* A Llama-3-8B-shaped cache (32 layers, 8 KV heads of 128, bf16) with a 1 GiB CPU budget. */
  kvp_config_options_init(&o, sizeof o);
  o.num_hidden_layers = 32;
  o.num_kv_heads = 8;
  o.kv_head_dim_size = 128;
  o.max_model_length = 8192;
  o.page_size = 16;
  o.budget_bytes = (int64_t)1 << 30;
  if (kvp_config_create(&o, &cfg) != KVP_OK) {
    fprintf(stderr, "kvp demo: %s\n", kvp_last_error_message());
    return 1;
  }
  if (kvp_tool_print_plan(&cfg, "explicit CPU budget of 1 GiB") != 0) return 1;
  if (kvp_cache_create(&cfg, NULL, &cache) != KVP_OK) {
    fprintf(stderr, "kvp demo: %s\n", kvp_last_error_message());
    return 1;
  }
  if (kvp_cache_get_view(cache, 0, KVP_VIEW_KEYS, &keys) != KVP_OK) {
    fprintf(stderr, "kvp demo: %s\n", kvp_last_error_message());
    kvp_cache_destroy(cache);
    return 1;
  }
  printf("\ncreated a CPU cache; layer 0 keys view: [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "]\n",
         keys.shape[0], keys.shape[1], keys.shape[2], keys.shape[3]);
  kvp_cache_destroy(cache);
  return 0;
}
