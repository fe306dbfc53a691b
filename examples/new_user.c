/* The "new user" program in C: plan a Llama-3-8B-shaped KV cache (32 layers, 8 KV heads, head
 * dim 128, bf16) within a 4 GiB budget of the CPU's memory, create it, write two prefills and
 * three decode tokens in ONE mixed batch, read the keys and values back, save the pages in use
 * to a file, load them into a new cache and compare again.
 *
 * The batch goes through kvp_metadata_build(), which puts decode requests first. With
 * KVP_BATCH_FLAG_REQUEST_ORDER the program packs the keys and values in its own request order
 * anyway: the metadata records where each row's tokens are, so nothing is repacked. Every value is a multiple of 1/64 in [-2, 2), exact in bf16, so what the cache
 * holds compares exactly with what was written (kvp_convert turns the bf16 read back into f32).
 *
 * Usage: new_user [FILE] (default: new_user.kvps in the current directory; removed at the end).
 * Exit status 0 when every comparison holds. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kvpages.h>

#define LAYERS 32
#define KV_HEADS 8
#define HEAD_DIM 128
#define PAGE_SIZE 16 /* tokens per page: small pages keep the memory this program touches small */
#define NUM_REQUESTS 5
#define ROW (KV_HEADS * HEAD_DIM) /* elements of one token's keys (or values) in one layer */

/* The batch: prefill, decode, prefill, decode, decode, so the builder has to reorder it. */
typedef struct request {
  const char *name;
  int64_t computed, scheduled; /* tokens already in the cache; tokens written now */
  int32_t pages[4];            /* the request's pages, in logical order */
  int64_t num_pages;
} request;

static const request requests[NUM_REQUESTS] = {
    {"prefill A", 0, 20, {1, 2}, 2},
    {"decode  B", 3, 1, {3}, 1},
    {"prefill C", 0, 5, {4}, 1},
    {"decode  D", 17, 1, {5, 6}, 2},
    {"decode  E", 40, 1, {7, 8, 9}, 3},
};
#define PAGES_IN_USE 9 /* pages 1 … 9 (page 0 is the null page) */

#define CHECK(call)                                                                          \
  do {                                                                                       \
    const kvp_status s_ = (call);                                                            \
    if (s_ != KVP_OK) {                                                                      \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, kvp_status_name(s_), kvp_last_error_message()); \
      exit(1);                                                                               \
    }                                                                                        \
  } while (0)

/* The value written for element e (of ROW) of token t of request r in a layer, keys (kind 0) or
 * values (kind 1): a multiple of 1/64 in [-2, 2), exact in bf16. */
static float element(int kind, int64_t layer, int r, int64_t t, int e) {
  const int64_t n = (kind * 7919 + layer * 131 + r * 31 + t * 17 + e * 3) % 256;
  return (float)(n - 128) / 64.0f;
}

/* Packs the batch's keys or values, bf16 [T, H, D], in request order: request 0's tokens, then
 * request 1's, and so on. */
/* [pack] */
static void pack(int kind, int64_t layer, uint16_t *out) {
  float row[ROW];
  int64_t at = 0;
  int r, e;
  for (r = 0; r < NUM_REQUESTS; ++r) {
    int64_t t;
    for (t = 0; t < requests[r].scheduled; ++t, ++at) {
      for (e = 0; e < ROW; ++e) row[e] = element(kind, layer, r, t, e);
      CHECK(kvp_convert(row, KVP_DTYPE_F32, out + (size_t)at * ROW, KVP_DTYPE_BF16, ROW));
    }
  }
}
/* [pack] */

static kvp_tensor host_tensor(void *data, int64_t tokens) {
  kvp_tensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.dtype = KVP_DTYPE_BF16;
  t.ndim = 3;
  t.shape[0] = tokens;
  t.shape[1] = KV_HEADS;
  t.shape[2] = HEAD_DIM;
  t.strides[0] = ROW;
  t.strides[1] = HEAD_DIM;
  t.strides[2] = 1;
  t.device_type = KVP_DEVICE_CPU;
  return t;
}

/* Writes the mixed batch into every layer. */
static void write_batch(kvp_cache *cache, const kvp_config *cfg) {
  kvp_batch_request batch[NUM_REQUESTS];
  int32_t order[NUM_REQUESTS];
  kvp_batch_options opts = KVP_BATCH_OPTIONS_INIT;
  kvp_metadata *md = NULL;
  int64_t tokens = 0, layer;
  uint16_t *keys, *values;
  int r;
  for (r = 0; r < NUM_REQUESTS; ++r) {
    batch[r].num_computed = requests[r].computed;
    batch[r].num_scheduled = requests[r].scheduled;
    batch[r].page_ids = requests[r].pages;
    batch[r].num_pages = requests[r].num_pages;
    tokens += requests[r].scheduled;
  }
  /* [batch] */
  opts.flags = KVP_BATCH_FLAG_REQUEST_ORDER; /* keys and values stay in our request order */
  CHECK(kvp_metadata_build(cfg, batch, NUM_REQUESTS, &opts, order, &md));
  printf("rows of the batch, decode first:");
  for (r = 0; r < NUM_REQUESTS; ++r) printf(" %s%s", requests[order[r]].name, r + 1 < NUM_REQUESTS ? "," : "\n");
  keys = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)tokens * ROW);
  values = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)tokens * ROW);
  if (keys == NULL || values == NULL) exit(1);
  for (layer = 0; layer < LAYERS; ++layer) {
    kvp_tensor k = host_tensor(keys, tokens), v = host_tensor(values, tokens);
    pack(0, layer, keys);
    pack(1, layer, values);
    CHECK(kvp_concatenate(cache, (uint32_t)layer, &k, &v, md, NULL));
  }
  /* [batch] */
  printf("wrote %" PRId64 " tokens (2 prefills, 3 decodes) into %d layers\n", tokens, LAYERS);
  free(keys);
  free(values);
  kvp_metadata_destroy(md);
}

/* Compares every written key and value of every layer with what was written; returns the number
 * of mismatching elements. The views are [pages, page_size, heads, head_dim] (strided). */
static int64_t compare(const kvp_cache *cache) {
  int64_t mismatches = 0, layer;
  for (layer = 0; layer < LAYERS; ++layer) {
    int kind;
    for (kind = 0; kind < 2; ++kind) {
      kvp_tensor view;
      int r;
      CHECK(kvp_cache_get_view(cache, (uint32_t)layer, kind == 0 ? KVP_VIEW_KEYS : KVP_VIEW_VALUES, &view));
      for (r = 0; r < NUM_REQUESTS; ++r) {
        int64_t t;
        for (t = 0; t < requests[r].scheduled; ++t) {
          const int64_t pos = requests[r].computed + t;
          const int64_t page = requests[r].pages[pos / PAGE_SIZE], slot = pos % PAGE_SIZE;
          int h, d;
          for (h = 0; h < KV_HEADS; ++h) {
            const uint16_t *src = (const uint16_t *)view.data + page * view.strides[0] + slot * view.strides[1] +
                                  h * view.strides[2];
            for (d = 0; d < HEAD_DIM; ++d) {
              float got;
              CHECK(kvp_convert(src + d * view.strides[3], KVP_DTYPE_BF16, &got, KVP_DTYPE_F32, 1));
              mismatches += got != element(kind, layer, r, t, h * HEAD_DIM + d);
            }
          }
        }
      }
    }
  }
  return mismatches;
}

/* Plans the cache: the shape, and a budget of 4 GiB of the memory of the device it lives on.
 * *total_bytes receives the memory the cache takes. */
static kvp_config plan(int64_t *total_bytes) {
  /* [plan] */
  kvp_config_options o = KVP_CONFIG_OPTIONS_INIT;
  kvp_plan p = KVP_PLAN_INIT;
  kvp_config cfg;
  o.num_hidden_layers = LAYERS;
  o.num_kv_heads = KV_HEADS;
  o.kv_head_dim_size = HEAD_DIM;
  o.max_model_length = 8192;
  o.page_size = PAGE_SIZE;
  o.kvdtype = KVP_DTYPE_BF16;
  o.device_type = KVP_DEVICE_CPU;
  o.budget_bytes = 4ll << 30;
  CHECK(kvp_config_create(&o, &cfg));
  CHECK(kvp_config_plan(&cfg, &p));
  /* [plan] */
  printf("plan: %" PRId64 " pages of %" PRId64 " tokens (%" PRId64 " bytes per token over all layers), %" PRId64
         " tokens fit in %" PRId64 " bytes\n",
         p.num_pages, p.page_size, p.bytes_per_token, p.token_capacity, p.total_bytes);
  *total_bytes = p.total_bytes;
  return cfg;
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "new_user.kvps";
  int32_t used[PAGES_IN_USE];
  kvp_serialize_options save = KVP_SERIALIZE_OPTIONS_INIT;
  kvp_serialized_info info = KVP_SERIALIZED_INFO_INIT;
  kvp_deserialize_options load = KVP_DESERIALIZE_OPTIONS_INIT;
  kvp_cache *cache = NULL, *loaded = NULL;
  kvp_config cfg;
  int64_t bad, total_bytes = 0;
  int i;
  CHECK(kvp_check_abi(KVP_VERSION_NUMBER));
  cfg = plan(&total_bytes);
  CHECK(kvp_cache_create(&cfg, NULL, &cache));
  write_batch(cache, &cfg);
  bad = compare(cache);
  printf("read back: %s\n", bad == 0 ? "every key and value as written" : "MISMATCH");

  /* [save] */
  for (i = 0; i < PAGES_IN_USE; ++i) used[i] = i + 1;
  save.page_ids = used;
  save.num_page_ids = PAGES_IN_USE;
  CHECK(kvp_serialize_to_file(cache, &save, path));
  CHECK(kvp_serialized_inspect_file(path, KVP_INSPECT_VERIFY, &info));
  printf("saved pages 1-%d to %s: %" PRIu64 " bytes\n", PAGES_IN_USE, path, info.total_bytes);
  CHECK(kvp_cache_destroy(cache));

  /* The file carries 9 pages of a 4 GiB cache. A load allocates the whole cache (memory the
   * pages it does not carry never touch), which is more than the default limit for a file this
   * small allows: allow the cache as planned, plus the bookkeeping. */
  load.max_cache_bytes = (uint64_t)total_bytes + (1u << 20);
  CHECK(kvp_deserialize_new_from_file(path, &load, &loaded));
  /* [save] */
  bad += compare(loaded);
  printf("loaded into a new cache: %s\n", bad == 0 ? "every key and value as written" : "MISMATCH");
  CHECK(kvp_cache_destroy(loaded));
  remove(path);
  return bad == 0 ? 0 : 1;
}
