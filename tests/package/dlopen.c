/* dlopen smoke test of the installed library: resolve the single entry point kvp_get_api, check
 * every field of the function table against the symbol of the same name, then use the library
 * through the table only (create a cache, read a view, provoke an error).
 * Usage: dlopen <path to libkvpages.so.1> */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <kvpages.h>

#define CHECK(cond, ...)                                 \
  do {                                                   \
    if (!(cond)) {                                       \
      fprintf(stderr, "dlopen: FAILED %s: ", #cond);     \
      fprintf(stderr, __VA_ARGS__);                      \
      fputc('\n', stderr);                               \
      return 1;                                          \
    }                                                    \
  } while (0)

/* The function pointers start after {struct_size, api_version}. */
#define FIRST_FN (offsetof(kvp_api_v1, api_version) + sizeof(uint32_t))

typedef struct entry {
  const char *field;
  size_t offset;
} entry;

static const entry entries[] = {
#define KVP_API_ENTRY(f) {#f, offsetof(kvp_api_v1, f)},
#include "api_names.h"
#undef KVP_API_ENTRY
};

int main(int argc, char **argv) {
  void *lib;
  kvp_get_api_fn get;
  const kvp_api_v1 *api;
  size_t i, n = sizeof entries / sizeof entries[0];
  kvp_config_options o;
  kvp_config cfg;
  kvp_cache *cache = NULL;
  kvp_tensor view;
  char msg[256];

  CHECK(argc == 2, "usage: dlopen <libkvpages.so.1>");
  lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  CHECK(lib != NULL, "%s", dlerror());
  *(void **)(&get) = dlsym(lib, "kvp_get_api");
  CHECK(get != NULL, "kvp_get_api not exported: %s", dlerror());
  CHECK(get(0) == NULL, "version 0 must be refused");
  CHECK(get(KVP_API_VERSION_1 + 1) == NULL, "an unknown future version must be refused");
  api = get(KVP_API_VERSION_1);
  CHECK(api != NULL, "version 1 refused");
  CHECK(api->api_version == KVP_API_VERSION_1, "api_version %u", api->api_version);
  CHECK(api->struct_size >= sizeof(kvp_api_v1), "table of %u bytes < %zu", api->struct_size, sizeof(kvp_api_v1));
  CHECK((sizeof(kvp_api_v1) - FIRST_FN) / sizeof(void (*)(void)) == n,
        "api_names.h lists %zu fields but kvp_api_v1 has %zu", n,
        (sizeof(kvp_api_v1) - FIRST_FN) / sizeof(void (*)(void)));

  /* Every field is the exported function of the same name, and the fields are in table order. */
  for (i = 0; i < n; ++i) {
    char sym[128];
    void *from_dlsym, *from_table;
    snprintf(sym, sizeof sym, "kvp_%s", entries[i].field);
    from_dlsym = dlsym(lib, sym);
    CHECK(from_dlsym != NULL, "%s is in the table but not exported", sym);
    memcpy(&from_table, (const char *)api + entries[i].offset, sizeof from_table);
    CHECK(from_table == from_dlsym, "table field %s does not point at %s", entries[i].field, sym);
    CHECK(i == 0 || entries[i].offset > entries[i - 1].offset, "field %s out of order", entries[i].field);
  }

  /* Use the library through the table only. */
  CHECK(api->check_abi(KVP_VERSION_NUMBER) == KVP_OK, "check_abi: %s", api->last_error_message());
  CHECK(api->version_number() == KVP_VERSION_NUMBER, "library %u, header %u", api->version_number(),
        (unsigned)KVP_VERSION_NUMBER);
  CHECK(api->config_options_init(&o, sizeof o) == KVP_OK, "%s", api->last_error_message());
  o.num_hidden_layers = 2; o.num_kv_heads = 2; o.kv_head_dim_size = 128; o.max_model_length = 64;
  o.page_size = 16; o.budget_bytes = 1 << 20;
  CHECK(api->config_create(&o, &cfg) == KVP_OK, "%s", api->last_error_message());
  CHECK(api->cache_create(&cfg, NULL, &cache) == KVP_OK, "%s", api->last_error_message());
  CHECK(api->cache_get_view(cache, 1, KVP_VIEW_KEYS, &view) == KVP_OK, "%s", api->last_error_message());
  CHECK(view.ndim == 4 && view.shape[2] == 2 && view.shape[3] == 128, "keys view shape");
  CHECK(api->cache_get_view(cache, 2, KVP_VIEW_KEYS, &view) == KVP_ERR_INVALID_ARGUMENT, "layer 2 accepted");
  CHECK(api->last_error_copy(msg, sizeof msg) > 0 && strstr(msg, "2") != NULL, "message '%s'", msg);
  CHECK(api->cache_destroy(cache) == KVP_OK, "%s", api->last_error_message());
  CHECK(api->cache_destroy(cache) == KVP_ERR_INVALID_HANDLE, "double destroy accepted");
  printf("dlopen: ok (%zu functions in kvp_api_v1, %u bytes)\n", n, api->struct_size);
  /* Not dlclose'd on purpose: nothing requires unloading, and it keeps leak checkers quiet. */
  return 0;
}
