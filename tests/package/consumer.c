/* A minimal consumer of the installed kvpages: plan a cache, create it, check the ABI. */
#include <kvpages.h>
#include <stdio.h>

int main(void) {
  kvp_config_options o = KVP_CONFIG_OPTIONS_INIT;
  kvp_config cfg;
  kvp_cache *cache = NULL;
  o.num_hidden_layers = 2; o.num_kv_heads = 2; o.kv_head_dim_size = 128; o.max_model_length = 256;
  o.page_size = 16; o.budget_bytes = 1 << 20;
  if (kvp_check_abi(KVP_VERSION_NUMBER) != KVP_OK || kvp_config_create(&o, &cfg) != KVP_OK ||
      kvp_cache_create(&cfg, NULL, &cache) != KVP_OK) {
    fprintf(stderr, "consumer: %s\n", kvp_last_error_message());
    return 1;
  }
  printf("consumer: kvpages %s, %lld pages\n", kvp_version_string(), (long long)cfg.num_pages);
  return kvp_cache_destroy(cache) == KVP_OK ? 0 : 1;
}
