/* Every INIT macro of the public headers, as a C or C++ embedder writes them; built with
 * -Wall -Wextra -Werror (tests/package/run.sh builds this file as C99, C++11 and C++17). Each
 * initialiser must give its struct's size and version, the documented defaults, and be accepted
 * by the call that takes it. */
#include <kvpages.h>
#include <stdio.h>
#include <string.h>

static kvp_config_options g_static_options = KVP_CONFIG_OPTIONS_INIT; /* at file scope too */

#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      fprintf(stderr, "init_macros: %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      return 1;                                                       \
    }                                                                 \
  } while (0)

static int check_inputs(void) {
  kvp_config_options o = KVP_CONFIG_OPTIONS_INIT;
  kvp_cache_options co = KVP_CACHE_OPTIONS_INIT;
  kvp_attention_options ao = KVP_ATTENTION_OPTIONS_INIT;
  kvp_metadata_desc md = KVP_METADATA_DESC_INIT;
  kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
  kvp_pool_options po = KVP_POOL_OPTIONS_INIT;
  kvp_serialize_options so = KVP_SERIALIZE_OPTIONS_INIT;
  kvp_deserialize_options dso = KVP_DESERIALIZE_OPTIONS_INIT;
  CHECK(g_static_options.struct_size == sizeof(kvp_config_options));
  CHECK(o.struct_size == sizeof o && o.abi_version == KVP_CONFIG_OPTIONS_VERSION && o.num_hidden_layers == 0);
  CHECK(co.struct_size == sizeof co && co.abi_version == KVP_CACHE_OPTIONS_VERSION && co.allocator == NULL);
  CHECK(ao.struct_size == sizeof ao && ao.abi_version == KVP_ATTENTION_OPTIONS_VERSION && ao.sinks == NULL);
  CHECK(md.struct_size == sizeof md && md.abi_version == KVP_METADATA_DESC_VERSION);
  CHECK(md.version == KVP_LAYOUT_V3 && md.device_type == KVP_DEVICE_CPU && md.pages_tables == NULL);
  CHECK(bo.struct_size == sizeof bo && bo.abi_version == KVP_BATCH_OPTIONS_VERSION);
  CHECK(po.struct_size == sizeof po && po.abi_version == KVP_POOL_OPTIONS_VERSION && po.max_sequences == 0);
  CHECK(so.struct_size == sizeof so && so.abi_version == KVP_SERIALIZE_OPTIONS_VERSION);
  CHECK(dso.struct_size == sizeof dso && dso.abi_version == KVP_DESERIALIZE_OPTIONS_VERSION);
  return 0;
}

static int check_outputs(void) {
  kvp_config cfg = KVP_CONFIG_INIT;
  kvp_config_options o = KVP_CONFIG_OPTIONS_INIT;
  kvp_layout_info li = KVP_LAYOUT_INFO_INIT;
  kvp_plan plan = KVP_PLAN_INIT;
  kvp_pool_stats ps = KVP_POOL_STATS_INIT;
  kvp_pool_shard_stats pss = KVP_POOL_SHARD_STATS_INIT;
  kvp_serialized_info si = KVP_SERIALIZED_INFO_INIT;
  CHECK(cfg.struct_size == sizeof cfg && cfg.page_size == 128 && cfg.num_pages == -1);
  CHECK(ps.struct_size == sizeof ps && ps.max_sequences == 0);
  CHECK(pss.struct_size == sizeof pss && pss.num_shards == 0);
  CHECK(si.struct_size == sizeof si && si.format_major == 0);
  o.num_hidden_layers = 2;
  o.num_kv_heads = 2;
  o.kv_head_dim_size = 128;
  o.max_model_length = 256;
  o.page_size = 16;
  o.budget_bytes = 1 << 20;
  CHECK(kvp_config_create(&o, &cfg) == KVP_OK);
  CHECK(kvp_config_get_layout(&cfg, &li) == KVP_OK && li.struct_size == sizeof li && li.itemsize == 2);
  CHECK(kvp_config_plan(&cfg, &plan) == KVP_OK && plan.num_pages == cfg.num_pages);
  return 0;
}

int main(void) {
  if (check_inputs() != 0 || check_outputs() != 0) return 1;
  printf("init_macros: every INIT macro ok\n");
  return 0;
}
