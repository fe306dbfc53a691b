// Header test (C++11): the public headers compile cleanly as C++11 under -Wall -Wpedantic
// -Werror, declare everything extern "C", and their initialisers are usable from C++.
#include <kvpages.h>
#include <kvpages/dlpack.h>

#include <type_traits>

static_assert(std::is_standard_layout<kvp_config>::value, "kvp_config must be standard-layout");
static_assert(std::is_standard_layout<kvp_api_v1>::value, "kvp_api_v1 must be standard-layout");
static_assert(std::is_same<kvp_status, int32_t>::value, "kvp_status is int32_t");

int headertest_cpp();

int headertest_cpp() {
  kvp_config cfg = KVP_CONFIG_INIT;
  kvp_cache_options cao = KVP_CACHE_OPTIONS_INIT;
  kvp_config_options co = KVP_CONFIG_OPTIONS_INIT;
  kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
  kvp_metadata_desc md = KVP_METADATA_DESC_INIT;
  const kvp_api_v1 *api = kvp_get_api(KVP_API_VERSION_1);
  kvp_get_api_fn get = &kvp_get_api;
  kvp_pool_options po = KVP_POOL_OPTIONS_INIT;
  kvp_serialize_options so = KVP_SERIALIZE_OPTIONS_INIT;
  kvp_deserialize_options dso = KVP_DESERIALIZE_OPTIONS_INIT;
  kvp_attention_options ao = KVP_ATTENTION_OPTIONS_INIT;
  (void)ao;
  (void)po;
  (void)so;
  (void)dso;
  (void)co;
  (void)bo;
  (void)md;
  kvp_status (*exp)(kvp_cache *, uint32_t, kvp_view_kind, uint32_t, DLManagedTensor **) = &kvp_cache_export_dlpack;
  (void)get;
  (void)exp;
  return cfg.struct_size == sizeof cfg && cao.struct_size == sizeof cao && (api == nullptr || KVP_API_HAS(api, check_abi));
}
