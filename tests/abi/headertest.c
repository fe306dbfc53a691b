/* Header test (C99): the public headers compile cleanly on their own under
 * -std=c99 -Wall -Wextra -Wpedantic -Werror -Wstrict-prototypes, and their static initialisers
 * and macros are usable from C. tests/abi/run.sh also compiles each header alone. */
#include <kvpages.h>
#include <kvpages/dlpack.h>

int headertest_c(void);

int headertest_c(void) {
  kvp_config cfg = KVP_CONFIG_INIT;
  kvp_config_options co = KVP_CONFIG_OPTIONS_INIT;
  kvp_cache_options cao = KVP_CACHE_OPTIONS_INIT;
  kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
  kvp_metadata_desc md = KVP_METADATA_DESC_INIT;
  kvp_pool_options po = KVP_POOL_OPTIONS_INIT;
  kvp_serialize_options so = KVP_SERIALIZE_OPTIONS_INIT;
  kvp_deserialize_options dso = KVP_DESERIALIZE_OPTIONS_INIT;
  kvp_attention_options ao = KVP_ATTENTION_OPTIONS_INIT;
  kvp_tensor t;
  const kvp_api_v1 *api = kvp_get_api(KVP_API_VERSION_1);
  kvp_get_api_fn get = kvp_get_api;
  DLManagedTensor *dl = NULL;
  int ok = KVP_VERSION_CHECK(1, 1, 0) && KVP_HAS_CUDA >= 0;
  (void)t;
  (void)po;
  (void)so;
  (void)dso;
  (void)bo;
  (void)ao;
  (void)md;
  (void)get;
  (void)dl;
  ok = ok && cfg.struct_size == sizeof cfg && co.abi_version == KVP_CONFIG_OPTIONS_VERSION &&
       cao.struct_size == sizeof cao && (api == NULL || KVP_API_HAS(api, status_name));
  return ok && kvp_status_name(KVP_OK) != NULL;
}
