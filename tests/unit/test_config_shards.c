/* Unit tests of the sharding resolution of kvp_config_create (SPEC.md §7.3): KV-head shards over
 * tensor-parallel devices kept, upcast (bf16, then fp32) or replicated; data-parallel page shards
 * multiplying the budget with num_pages rounded down to a multiple of dp; both recorded in the
 * config, its JSON and the plan (numbers per device and the decision in words); bad input.
 *
 * Storage groups split over the devices (v3): G(dtype) = align(2H, pack) / pack (head_dim 64:
 * align(H, pack) / pack), pack = 4 / itemsize; v2 splits the 2H combined heads. Every number
 * below was worked out by hand from these formulas and those of test_config.c. */
#include "support.h"

#include <stddef.h>
#include <stdlib.h>
#include <stdio.h>

#define MiB (1024LL * 1024LL)
#define GiB (1024LL * MiB)
#define FILL 0x5C

/* Options with an explicit per-device budget and no safety margin. */
static kvp_config_options opts(int64_t L, int64_t H, int64_t D, kvp_dtype dt, int64_t page, kvp_layout ver,
                               int64_t tp, int64_t dp, int64_t budget) {
  kvp_config_options o;
  assert_kvp_ok(kvp_config_options_init(&o, sizeof o));
  o.num_hidden_layers = L;
  o.num_kv_heads = H;
  o.kv_head_dim_size = D;
  o.max_model_length = 4096;
  o.page_size = page;
  o.kvdtype = dt;
  o.version = ver;
  o.kv_head_shards = tp;
  o.data_parallel_size = dp;
  o.budget_bytes = budget;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  return o;
}

static kvp_config create(const kvp_config_options *o) {
  kvp_config c;
  assert_kvp_ok(kvp_config_create(o, &c));
  assert_kvp_ok(kvp_config_validate(&c));
  return c;
}

static kvp_plan plan(const kvp_config *c) {
  kvp_plan p;
  memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  assert_kvp_ok(kvp_config_plan(c, &p));
  return p;
}

static void expect_message(const kvp_plan *p, const char *substr) {
  if (strstr(p->sharding_message, substr) == NULL) fail_msg("'%s' lacks '%s'", p->sharding_message, substr);
}

/* Upstream: H=8, D=128, bf16 over 4 devices: G = 8, divisible, kept. */
static void test_shards__keep(void **state) {
  (void)state;
  /* 32 layers x 128 tokens x 16 combined x 128 x 2 B = 16 MiB a page; 1 GiB x 4 devices = 256 pages */
  kvp_config_options o = opts(32, 8, 128, KVP_DTYPE_BF16, 128, KVP_LAYOUT_V3, 4, 0, GiB);
  kvp_config c = create(&o);
  assert_int_equal(c.kv_head_shards, 4);
  assert_int_equal(c.data_parallel_size, 1);
  assert_int_equal(c.requested_kv_head_shards, 0);
  assert_int_equal(c.requested_kvdtype, KVP_DTYPE_INVALID);
  assert_int_equal(c.kvdtype, KVP_DTYPE_BF16);
  assert_int_equal(c.num_pages, 256);
  kvp_plan p = plan(&c);
  assert_int_equal(p.head_sharding, KVP_HEAD_SHARDING_KEEP);
  assert_int_equal(p.kv_head_shards, 4);
  assert_int_equal(p.requested_kv_head_shards, 4);
  assert_int_equal(p.units_per_device, 2);
  assert_int_equal(p.pages_per_device, 256);
  assert_int_equal(p.bytes_per_device, GiB); /* 256 x 16 MiB / 4 */
  assert_int_equal(p.total_bytes, 4 * GiB);
  expect_message(&p, "keep bf16: 8 storage groups split over 4 devices (2 per device)");
  /* v2 splits the 2H = 4 combined heads: 4 devices keep them */
  o = opts(1, 2, 128, KVP_DTYPE_BF16, 128, KVP_LAYOUT_V2, 4, 0, MiB);
  c = create(&o);
  assert_int_equal(c.kv_head_shards, 4);
  p = plan(&c);
  assert_int_equal(p.units_per_device, 1);
  expect_message(&p, "keep bf16: 4 combined heads split over 4 devices (1 per device)");
}

/* Upstream: H=4, D=128, fp8 over 4 devices: G(fp8) = 2, not divisible; G(bf16) = 4: upcast. */
static void test_shards__upcast(void **state) {
  (void)state;
  /* bf16 page: 128 x 8 x 128 x 2 B = 256 KiB; 1 MiB x 4 devices = 16 pages */
  kvp_config_options o = opts(1, 4, 128, KVP_DTYPE_F8_E4M3FN, 128, KVP_LAYOUT_V3, 4, 0, MiB);
  kvp_config c = create(&o);
  assert_int_equal(c.kvdtype, KVP_DTYPE_BF16);
  assert_int_equal(c.requested_kvdtype, KVP_DTYPE_F8_E4M3FN);
  assert_int_equal(c.kv_head_shards, 4);
  assert_int_equal(c.requested_kv_head_shards, 0);
  assert_int_equal(c.num_pages, 16);
  assert_int_equal(c.num_slices_per_kv_cache_update_page, 64); /* 16 MiB / 256 KiB, capped */
  kvp_layout_info li = KVP_LAYOUT_INFO_INIT;
  assert_kvp_ok(kvp_config_get_layout(&c, &li));
  assert_int_equal(li.storage_num_kv_groups, 4);
  assert_int_equal(li.kv_head_packing, 2);
  kvp_plan p = plan(&c);
  assert_int_equal(p.head_sharding, KVP_HEAD_SHARDING_UPCAST);
  assert_int_equal(p.requested_kvdtype, KVP_DTYPE_F8_E4M3FN);
  assert_int_equal(p.kvdtype, KVP_DTYPE_BF16);
  assert_int_equal(p.units_per_device, 1);
  expect_message(&p, "upcast fp8_e4m3fn \xe2\x86\x92 bf16 because 2 storage groups do not split over 4 devices");
  expect_message(&p, "(bf16 has 4: 1 per device)");
  /* fp16 cannot become bf16 (same packing, G = 1): H=1 over 2 devices goes to fp32 (G = 2) */
  o = opts(1, 1, 128, KVP_DTYPE_F16, 128, KVP_LAYOUT_V3, 2, 0, MiB);
  c = create(&o);
  assert_int_equal(c.kvdtype, KVP_DTYPE_F32);
  assert_int_equal(c.requested_kvdtype, KVP_DTYPE_F16);
  p = plan(&c);
  expect_message(&p, "upcast fp16 \xe2\x86\x92 fp32 because 1 storage groups do not split over 2 devices");
  /* The reference tries bf16 first even for fp32: head_dim 64, 3 heads over 2 devices has
   * G(fp32) = 3 but G(bf16) = align(3, 2) / 2 = 2 */
  o = opts(1, 3, 64, KVP_DTYPE_F32, 128, KVP_LAYOUT_V3, 2, 0, MiB);
  c = create(&o);
  assert_int_equal(c.kvdtype, KVP_DTYPE_BF16);
  assert_int_equal(c.requested_kvdtype, KVP_DTYPE_F32);
  assert_int_equal(c.kv_head_shards, 2);
}

/* Upstream: H=1, D=128 over 1024 devices: no dtype divides; replicate (shards 1, dtype kept). */
static void test_shards__replicate(void **state) {
  (void)state;
  /* bf16 page: 128 x 2 x 128 x 2 B = 64 KiB; the budget is not multiplied: 16 pages */
  kvp_config_options o = opts(1, 1, 128, KVP_DTYPE_BF16, 128, KVP_LAYOUT_V3, 1024, 0, MiB);
  kvp_config c = create(&o);
  assert_int_equal(c.kv_head_shards, 1);
  assert_int_equal(c.requested_kv_head_shards, 1024);
  assert_int_equal(c.kvdtype, KVP_DTYPE_BF16);
  assert_int_equal(c.requested_kvdtype, KVP_DTYPE_INVALID);
  assert_int_equal(c.num_pages, 16);
  kvp_plan p = plan(&c);
  assert_int_equal(p.head_sharding, KVP_HEAD_SHARDING_REPLICATE);
  assert_int_equal(p.units_per_device, 1);
  assert_int_equal(p.bytes_per_device, p.total_bytes);
  expect_message(&p, "replicate: 1 storage groups of bf16 do not split over 1024 devices, nor do those of fp32, so");
  /* v2 never changes the dtype: 2H = 6 over 4 devices replicates, fp8 stays */
  o = opts(1, 3, 128, KVP_DTYPE_F8_E4M3FN, 128, KVP_LAYOUT_V2, 4, 0, MiB);
  c = create(&o);
  assert_int_equal(c.kv_head_shards, 1);
  assert_int_equal(c.requested_kv_head_shards, 4);
  assert_int_equal(c.kvdtype, KVP_DTYPE_F8_E4M3FN);
  p = plan(&c);
  expect_message(&p, "replicate: 6 combined heads of fp8_e4m3fn do not split over 4 devices (v2 keeps its dtype)");
  /* one device: nothing to resolve */
  o = opts(1, 1, 128, KVP_DTYPE_BF16, 128, KVP_LAYOUT_V3, 1, 0, MiB);
  c = create(&o);
  p = plan(&c);
  assert_int_equal(p.head_sharding, KVP_HEAD_SHARDING_NONE);
  assert_int_equal(p.kv_head_shards, 1);
  expect_message(&p, "KV heads not sharded");
}

/* Upstream: fp32, 1 layer, 1 head, head dim 1, page 1, budget 1 MiB -> 131,072 pages (the
 * reference's unpadded page of 2 x 4 B); 262,144 with dp = 2. */
static void test_shards__data_parallel_budget(void **state) {
  (void)state;
  kvp_config_options o = opts(1, 1, 1, KVP_DTYPE_F32, 1, KVP_LAYOUT_V3, 0, 0, MiB);
  o.flags |= KVP_CONFIG_FLAG_REFERENCE_BUDGET;
  kvp_config c = create(&o);
  assert_int_equal(c.num_pages, 131072);
  assert_int_equal(c.data_parallel_size, 1);
  o.data_parallel_size = 2;
  c = create(&o);
  assert_int_equal(c.num_pages, 262144);
  assert_int_equal(c.data_parallel_size, 2);
  kvp_plan p = plan(&c);
  assert_int_equal(p.pages_per_device, 131072);
  expect_message(&p, "; pages split over 2 data-parallel shards of 131072");
  /* rounding down to a multiple of dp: 12 B per device, 8 B pages, dp 2 -> 24 / 8 = 3 -> 2 */
  o.budget_bytes = 12;
  c = create(&o);
  assert_int_equal(c.num_pages, 2);
  /* dp 3: 36 / 8 = 4 -> 3 */
  o.data_parallel_size = 3;
  c = create(&o);
  assert_int_equal(c.num_pages, 3);
  /* TP and DP together: 16 MiB pages, 1 GiB x 4 x 2 = 512 pages, 256 per DP shard, 1 GiB a device */
  o = opts(32, 8, 128, KVP_DTYPE_BF16, 128, KVP_LAYOUT_V3, 4, 2, GiB);
  c = create(&o);
  assert_int_equal(c.num_pages, 512);
  p = plan(&c);
  assert_int_equal(p.pages_per_device, 256);
  assert_int_equal(p.bytes_per_device, GiB);
  assert_int_equal(p.data_parallel_size, 2);
}

static void expect_create_error(const kvp_config_options *o, kvp_status code, const char *substr) {
  kvp_config out, before;
  memset(&out, FILL, sizeof out);
  memcpy(&before, &out, sizeof out);
  kvp_config_options copy = *o;
  assert_kvp_status(kvp_config_create(o, &out), code, substr);
  assert_memory_equal(&out, &before, sizeof out);
  assert_memory_equal(&copy, o, sizeof copy);
}

static void test_shards__create_rejects_bad_input(void **state) {
  (void)state;
  kvp_config_options o = opts(1, 8, 128, KVP_DTYPE_BF16, 128, KVP_LAYOUT_V3, 2, 2, MiB);
  o.kv_head_shards = -1;
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "kv_head_shards");
  o.kv_head_shards = 65537;
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "kv_head_shards");
  o.kv_head_shards = 2;
  o.data_parallel_size = -2;
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "data_parallel_size");
  o.data_parallel_size = 65537;
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "data_parallel_size");
  /* DP that does not fit: a 16 B page, 12 B a device, dp 2 -> 24 / 16 = 1 page for 2 shards */
  o = opts(1, 1, 1, KVP_DTYPE_F32, 1, KVP_LAYOUT_V3, 0, 2, 12);
  o.flags |= KVP_CONFIG_FLAG_REFERENCE_BUDGET;
  o.kv_head_dim_size = 2;
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "fewer than data_parallel_size 2");
  /* an upcast page over 16 MiB: fp8 1024 B a token (16 MiB at 16384 tokens), bf16 twice that */
  o = opts(1, 4, 128, KVP_DTYPE_F8_E4M3FN, 16384, KVP_LAYOUT_V3, 4, 0, GiB);
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "bf16");
  o.kv_head_shards = 1; /* without the upcast the same shape fits */
  (void)create(&o);
  /* the reference's fp32 -> bf16 for head_dim 64 with an odd page size does not fit bf16's packing */
  o = opts(1, 3, 64, KVP_DTYPE_F32, 7, KVP_LAYOUT_V3, 2, 0, MiB);
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "page_size 7 must be a multiple of the packing 2 of bf16");
  /* 0 means 1 for both */
  o = opts(1, 8, 128, KVP_DTYPE_BF16, 128, KVP_LAYOUT_V3, 0, 0, MiB);
  kvp_config c = create(&o);
  assert_int_equal(c.kv_head_shards, 1);
  assert_int_equal(c.data_parallel_size, 1);
}

static void expect_validate_error(const kvp_config *c, kvp_status code, const char *substr) {
  kvp_config copy = *c;
  assert_kvp_status(kvp_config_validate(c), code, substr);
  assert_memory_equal(&copy, c, sizeof copy);
  kvp_plan p, before;
  memset(&p, FILL, sizeof p);
  p.struct_size = sizeof p;
  before = p;
  assert_kvp_status(kvp_config_plan(c, &p), code, substr);
  assert_memory_equal(&p, &before, sizeof p);
}

static void test_shards__validate(void **state) {
  (void)state;
  kvp_config_options o = opts(1, 4, 128, KVP_DTYPE_F8_E4M3FN, 128, KVP_LAYOUT_V3, 4, 2, MiB);
  const kvp_config good = create(&o); /* upcast to bf16, 32 pages */
  assert_int_equal(good.num_pages, 32);
  kvp_config c = good;
  c.kv_head_shards = 3; /* does not split 4 groups */
  expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "kv_head_shards 3");
  c = good;
  c.requested_kvdtype = KVP_DTYPE_INVALID; /* bf16 asked for: no upcast to record */
  assert_kvp_ok(kvp_config_validate(&c));
  c = good;
  c.kvdtype = KVP_DTYPE_F32; /* not what fp8 over 4 resolves to */
  c.num_slices_per_kv_cache_update_page = -1;
  expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "resolve to (4 shards of bf16");
  c = good;
  c.requested_kv_head_shards = 8; /* 4 shards kept, but 8 were asked: fp8 has 2 groups, bf16 4, fp32 8 */
  expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "8 requested shards");
  c = good;
  c.num_pages = 31;
  expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "not a multiple of data_parallel_size 2");
  c = good;
  c.data_parallel_size = -1;
  expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "data_parallel_size");
  c = good;
  c.kv_head_shards = 65537;
  expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "kv_head_shards");
  c = good;
  c.requested_kvdtype = 99u;
  expect_validate_error(&c, KVP_ERR_NOT_FOUND, "99");
  c = good;
  c._reserved1 = 1;
  expect_validate_error(&c, KVP_ERR_UNSUPPORTED, "_reserved1");
  /* a record of version 1 (zeros) is unsharded */
  c = good;
  c.data_parallel_size = 0;
  c.kv_head_shards = 0;
  c.requested_kvdtype = KVP_DTYPE_INVALID;
  assert_kvp_ok(kvp_config_validate(&c));
  kvp_plan p = plan(&c);
  assert_int_equal(p.data_parallel_size, 1);
  assert_int_equal(p.kv_head_shards, 1);
  assert_int_equal(p.head_sharding, KVP_HEAD_SHARDING_NONE);
}

/* Callers built against version 1 of the structs (kvpages 1.0-1.2) keep working: they get the
 * version 1 part of the config and the plan, nothing beyond. */
static void test_shards__version_1_structs(void **state) {
  (void)state;
  const uint32_t opts_v1 = (uint32_t)offsetof(kvp_config_options, data_parallel_size);
  const uint32_t cfg_v1 = (uint32_t)offsetof(kvp_config, data_parallel_size);
  const uint32_t plan_v1 = (uint32_t)offsetof(kvp_plan, data_parallel_size);
  kvp_config_options o = opts(32, 8, 128, KVP_DTYPE_BF16, 128, KVP_LAYOUT_V3, 2, 0, GiB);
  o.struct_size = opts_v1;
  o.abi_version = 1;
  kvp_config c, before;
  memset(&c, FILL, sizeof c);
  before = c;
  assert_kvp_ok(kvp_config_create(&o, &c));
  assert_int_equal(c.struct_size, cfg_v1);
  assert_int_equal(c.num_pages, 128); /* the budget doubled by the 2 devices that split 8 groups */
  assert_memory_equal((char *)&c + cfg_v1, (char *)&before + cfg_v1, sizeof c - cfg_v1);
  assert_kvp_ok(kvp_config_validate(&c)); /* read as version 1: unsharded */
  kvp_plan p, pb;
  memset(&p, FILL, sizeof p);
  p.struct_size = plan_v1;
  pb = p;
  assert_kvp_ok(kvp_config_plan(&c, &p));
  assert_int_equal(p.num_pages, 128);
  assert_memory_equal((char *)&p + plan_v1, (char *)&pb + plan_v1, sizeof p - plan_v1);
  /* kvp_config_init of a version 1 record */
  memset(&c, FILL, sizeof c);
  assert_kvp_ok(kvp_config_init(&c, cfg_v1));
  assert_int_equal(c.struct_size, cfg_v1);
  assert_int_equal(c.abi_version, 1);
  assert_int_equal(c.page_size, 128);
  assert_memory_equal((char *)&c + cfg_v1, (char *)&before + cfg_v1, sizeof c - cfg_v1);
  assert_kvp_status(kvp_config_init(&c, cfg_v1 - 8), KVP_ERR_VERSION_MISMATCH, "struct_size");
  memset(&o, 0, sizeof o);
  assert_kvp_ok(kvp_config_options_init(&o, opts_v1));
  assert_int_equal(o.struct_size, opts_v1);
}

static char *to_json(const kvp_config *c) {
  size_t need = 0;
  assert_kvp_status(kvp_config_to_json(c, NULL, 0, &need), KVP_ERR_BUFFER_TOO_SMALL, "");
  char *s = malloc(need);
  size_t n = 0;
  assert_kvp_ok(kvp_config_to_json(c, s, need, &n));
  return s;
}

static void test_shards__json(void **state) {
  (void)state;
  kvp_config_options o = opts(1, 4, 128, KVP_DTYPE_F8_E4M3FN, 128, KVP_LAYOUT_V3, 4, 2, MiB);
  const kvp_config c = create(&o);
  char *s = to_json(&c);
  assert_string_equal(s,
                      "{\"num_hidden_layers\": 1, \"max_model_length\": 4096, \"num_kv_heads\": 4, \"k_headdim\": 128, "
                      "\"v_headdim\": 128, \"hbm_utilization\": 0.9, \"data_parallel_size\": 2, \"kv_head_shards\": 4, "
                      "\"page_size\": 128, \"num_pages\": 32, \"max_num_pages_per_req\": 32, "
                      "\"num_slices_per_kv_cache_update_page\": 64, \"max_num_tokens\": -1, \"max_num_reqs\": -1, "
                      "\"version\": \"v3\", \"_kvdtype_str\": \"bf16\", \"requested_kvdtype\": \"fp8_e4m3fn\"}");
  kvp_config back = KVP_CONFIG_INIT;
  assert_kvp_ok(kvp_config_from_json(s, strlen(s), &back));
  assert_memory_equal(&back, &c, sizeof c);
  free(s);
  /* replicated: the shards asked for travel too */
  o = opts(1, 1, 128, KVP_DTYPE_BF16, 128, KVP_LAYOUT_V3, 1024, 0, MiB);
  const kvp_config r = create(&o);
  s = to_json(&r);
  assert_non_null(strstr(s, "\"hbm_utilization\": 0.9, \"data_parallel_size\": 1, \"kv_head_shards\": 1, \"page_size\""));
  assert_non_null(strstr(s, "\"_kvdtype_str\": \"bf16\", \"requested_kv_head_shards\": 1024}"));
  assert_kvp_ok(kvp_config_from_json(s, strlen(s), &back));
  assert_memory_equal(&back, &r, sizeof r);
  free(s);
  /* the reference's HEAD keys are kept, not dropped */
  const char *head = "{\"num_hidden_layers\": 1, \"max_model_length\": 4096, \"num_kv_heads\": 8, \"k_headdim\": 128, "
                     "\"v_headdim\": 128, \"hbm_utilization\": 0.9, \"data_parallel_size\": 2, \"kv_head_shards\": 4, "
                     "\"page_size\": 128, \"num_pages\": 64, \"window_aware_max_num_seqs\": -1, \"version\": \"v3\", "
                     "\"_kvdtype_str\": \"bf16\", \"_mixed_layer_configs\": null}";
  assert_kvp_ok(kvp_config_from_json(head, strlen(head), &back));
  assert_int_equal(back.data_parallel_size, 2);
  assert_int_equal(back.kv_head_shards, 4);
  assert_int_equal(back.requested_kv_head_shards, 0);
  assert_int_equal(back.requested_kvdtype, KVP_DTYPE_INVALID);
  assert_kvp_ok(kvp_config_validate(&back));
  /* wrong types and names */
  const char *bad_int = "{\"num_hidden_layers\": 1, \"max_model_length\": 1, \"num_kv_heads\": 1, \"k_headdim\": 128, "
                        "\"v_headdim\": 128, \"kv_head_shards\": \"4\"}";
  kvp_config untouched;
  memset(&back, FILL, sizeof back);
  untouched = back;
  assert_kvp_status(kvp_config_from_json(bad_int, strlen(bad_int), &back), KVP_ERR_INVALID_ARGUMENT, "kv_head_shards");
  assert_memory_equal(&back, &untouched, sizeof back);
  const char *bad_dt = "{\"num_hidden_layers\": 1, \"max_model_length\": 1, \"num_kv_heads\": 1, \"k_headdim\": 128, "
                       "\"v_headdim\": 128, \"requested_kvdtype\": \"int8\"}";
  assert_kvp_status(kvp_config_from_json(bad_dt, strlen(bad_dt), &back), KVP_ERR_NOT_FOUND, "requested_kvdtype");
  assert_memory_equal(&back, &untouched, sizeof back);
  /* shard counts below 1 (found by fuzz_config_json: -1 read back as 1 after a round trip) */
  const char *below_one[] = {"\"kv_head_shards\": -1", "\"kv_head_shards\": 0", "\"data_parallel_size\": 0",
                             "\"data_parallel_size\": -2"};
  for (size_t i = 0; i < sizeof below_one / sizeof below_one[0]; ++i) {
    char js[256];
    snprintf(js, sizeof js, "{\"num_hidden_layers\": 1, \"max_model_length\": 1, \"num_kv_heads\": 1, "
             "\"k_headdim\": 128, \"v_headdim\": 128, %s}", below_one[i]);
    assert_kvp_status(kvp_config_from_json(js, strlen(js), &back), KVP_ERR_INVALID_ARGUMENT, "must be at least 1");
    assert_memory_equal(&back, &untouched, sizeof back);
  }
}

/* What a program built against kvpages 1.0-1.2 hands in: a record of version 1's size right
 * before other memory (the guard), its bytes uninitialised (the 0xA5 pattern). */
#define OLD_FILL 0xA5
#define V1_CONFIG 112u
#define V1_PLAN 88u
#define V1_INFO 216u
typedef struct old_config {
  union {
    int64_t align;
    unsigned char bytes[V1_CONFIG];
  } rec;
  unsigned char guard[64];
} old_config;
typedef struct old_plan {
  union {
    int64_t align;
    unsigned char bytes[V1_PLAN];
  } rec;
  unsigned char guard[64];
} old_plan;
typedef struct old_info {
  union {
    int64_t align;
    unsigned char bytes[V1_INFO];
  } rec;
  unsigned char guard[64];
} old_info;

static void expect_guard(const unsigned char *guard, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (guard[i] != OLD_FILL) fail_msg("guard byte %zu overwritten: 0x%02x", i, guard[i]);
}

/* The version 1 record in an old caller's buffer is `want`'s version 1 fields, marked version 1. */
static void expect_v1_config(const unsigned char *bytes, const kvp_config *want) {
  kvp_config got, w = *want;
  memset(&got, 0, sizeof got);
  memcpy(&got, bytes, V1_CONFIG);
  assert_int_equal(got.struct_size, V1_CONFIG);
  assert_int_equal(got.abi_version, 1);
  w.struct_size = V1_CONFIG;
  w.abi_version = 1;
  assert_memory_equal(&got, &w, V1_CONFIG);
}

/* Every function that writes a grown struct writes only version 1 into an old caller's buffer,
 * however uninitialised; a caller who set struct_size and abi_version to version 2's gets it. */
static void test_shards__old_callers_buffers_are_not_overrun(void **state) {
  (void)state;
  assert_int_equal(offsetof(kvp_config, data_parallel_size), V1_CONFIG);
  assert_int_equal(offsetof(kvp_plan, data_parallel_size), V1_PLAN);
  assert_int_equal(offsetof(kvp_serialized_info, config) + V1_CONFIG, V1_INFO);
  /* sharded (tp 4 upcast fp8 -> bf16, dp 2), so the version 2 fields are not defaults */
  kvp_config_options o = opts(1, 4, 128, KVP_DTYPE_F8_E4M3FN, 128, KVP_LAYOUT_V3, 4, 2, MiB);
  const kvp_config full = create(&o);
  assert_int_equal(full.struct_size, sizeof full);
  assert_int_equal(full.abi_version, KVP_CONFIG_VERSION);
  assert_int_equal(full.kv_head_shards, 4);
  old_config oc;

  /* kvp_config_create: an old caller's options are version 1 */
  kvp_config_options o1 = o;
  o1.struct_size = (uint32_t)offsetof(kvp_config_options, data_parallel_size);
  o1.abi_version = 1;
  o1.data_parallel_size = 0;
  memset(&oc, OLD_FILL, sizeof oc);
  assert_kvp_ok(kvp_config_create(&o1, (kvp_config *)&oc.rec));
  expect_guard(oc.guard, sizeof oc.guard);
  kvp_config want1 = full; /* without dp the budget halves */
  want1.num_pages = full.num_pages / 2;
  expect_v1_config(oc.rec.bytes, &want1);

  /* kvp_cache_get_config */
  kvp_cache *c = kvp_test_cache_on(&full, KVP_DEVICE_CPU, 0);
  memset(&oc, OLD_FILL, sizeof oc);
  assert_kvp_ok(kvp_cache_get_config(c, (kvp_config *)&oc.rec));
  expect_guard(oc.guard, sizeof oc.guard);
  expect_v1_config(oc.rec.bytes, &full);

  /* kvp_config_from_json */
  char *js = to_json(&full);
  memset(&oc, OLD_FILL, sizeof oc);
  assert_kvp_ok(kvp_config_from_json(js, strlen(js), (kvp_config *)&oc.rec));
  expect_guard(oc.guard, sizeof oc.guard);
  expect_v1_config(oc.rec.bytes, &full);

  /* kvp_config_init with version 1's size */
  memset(&oc, OLD_FILL, sizeof oc);
  assert_kvp_ok(kvp_config_init((kvp_config *)&oc.rec, V1_CONFIG));
  expect_guard(oc.guard, sizeof oc.guard);
  const kvp_config init = KVP_CONFIG_INIT;
  expect_v1_config(oc.rec.bytes, &init);

  /* kvp_config_plan: old callers set struct_size (required since 1.0), the rest uninitialised */
  old_plan op;
  memset(&op, OLD_FILL, sizeof op);
  const uint32_t plan_size = V1_PLAN, info_size = V1_INFO;
  memcpy(op.rec.bytes, &plan_size, sizeof plan_size);
  assert_kvp_ok(kvp_config_plan(&full, (kvp_plan *)&op.rec));
  expect_guard(op.guard, sizeof op.guard);
  const kvp_plan pfull = plan(&full);
  kvp_plan p1;
  memcpy(&p1, op.rec.bytes, V1_PLAN);
  assert_int_equal(p1.struct_size, V1_PLAN);
  assert_memory_equal((const char *)&p1 + 8, (const char *)&pfull + 8, V1_PLAN - 8);

  /* kvp_serialized_inspect: likewise; its config is version 1 */
  kvp_serialize_options so = KVP_SERIALIZE_OPTIONS_INIT;
  size_t need = 0, n = 0;
  assert_kvp_ok(kvp_serialized_size(c, &so, &need));
  unsigned char *blob = malloc(need);
  assert_non_null(blob);
  assert_kvp_ok(kvp_serialize(c, &so, blob, need, &n));
  kvp_serialized_info ifull = KVP_SERIALIZED_INFO_INIT;
  assert_kvp_ok(kvp_serialized_inspect(blob, n, KVP_INSPECT_VERIFY, &ifull));
  assert_int_equal(ifull.config.struct_size, sizeof(kvp_config));
  assert_int_equal(ifull.config.abi_version, KVP_CONFIG_VERSION);
  /* (blobs do not carry the sharding yet: the version 1 fields) */
  assert_memory_equal((const char *)&ifull.config + 8, (const char *)&full + 8, V1_CONFIG - 8);
  old_info oi;
  memset(&oi, OLD_FILL, sizeof oi);
  memcpy(oi.rec.bytes, &info_size, sizeof info_size);
  assert_kvp_ok(kvp_serialized_inspect(blob, n, KVP_INSPECT_VERIFY, (kvp_serialized_info *)&oi.rec));
  expect_guard(oi.guard, sizeof oi.guard);
  uint32_t got_size;
  memcpy(&got_size, oi.rec.bytes, sizeof got_size);
  assert_int_equal(got_size, V1_INFO);
  assert_memory_equal(oi.rec.bytes + 4, (const char *)&ifull + 4, offsetof(kvp_serialized_info, config) - 4);
  expect_v1_config(oi.rec.bytes + offsetof(kvp_serialized_info, config), &full);
  free(blob);
  free(js);
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* A caller opts in to version 2 by setting struct_size and abi_version to exactly its values
 * (KVP_CONFIG_INIT, kvp_config_init()); kvp_config_create's version 2 options opt in too. */
static void test_shards__callers_opt_in_to_version_2(void **state) {
  (void)state;
  kvp_config_options o = opts(1, 4, 128, KVP_DTYPE_F8_E4M3FN, 128, KVP_LAYOUT_V3, 4, 2, MiB);
  const kvp_config full = create(&o);
  kvp_config_options o1 = o;
  o1.struct_size = (uint32_t)offsetof(kvp_config_options, data_parallel_size);
  o1.abi_version = 1;
  o1.data_parallel_size = 0;
  kvp_cache *c = kvp_test_cache_on(&full, KVP_DEVICE_CPU, 0);
  char *js = to_json(&full);
  /* struct_size and abi_version exactly version 2's, before the call */
  struct {
    kvp_config rec;
    unsigned char guard[64];
  } nc;
  memset(&nc, OLD_FILL, sizeof nc);
  nc.rec.struct_size = sizeof nc.rec;
  nc.rec.abi_version = KVP_CONFIG_VERSION;
  assert_kvp_ok(kvp_cache_get_config(c, &nc.rec));
  expect_guard(nc.guard, sizeof nc.guard);
  assert_memory_equal(&nc.rec, &full, sizeof full);
  memset(&nc, OLD_FILL, sizeof nc);
  nc.rec.struct_size = sizeof nc.rec;
  nc.rec.abi_version = KVP_CONFIG_VERSION;
  assert_kvp_ok(kvp_config_from_json(js, strlen(js), &nc.rec));
  assert_memory_equal(&nc.rec, &full, sizeof full);
  memset(&nc, OLD_FILL, sizeof nc);
  nc.rec.struct_size = sizeof nc.rec;
  nc.rec.abi_version = KVP_CONFIG_VERSION;
  assert_kvp_ok(kvp_config_create(&o1, &nc.rec)); /* version 1 options, version 2 record */
  assert_int_equal(nc.rec.struct_size, sizeof nc.rec);
  assert_int_equal(nc.rec.data_parallel_size, 1);
  assert_int_equal(nc.rec.kv_head_shards, 4);
  /* version 2 options opt in by themselves */
  memset(&nc, OLD_FILL, sizeof nc);
  assert_kvp_ok(kvp_config_create(&o, &nc.rec));
  expect_guard(nc.guard, sizeof nc.guard);
  assert_memory_equal(&nc.rec, &full, sizeof full);
  /* a near miss is version 1: the size without the version, the version without the size */
  memset(&nc, OLD_FILL, sizeof nc);
  nc.rec.struct_size = sizeof nc.rec;
  nc.rec.abi_version = 1;
  assert_kvp_ok(kvp_cache_get_config(c, &nc.rec));
  expect_guard((const unsigned char *)&nc.rec + V1_CONFIG, sizeof nc.rec - V1_CONFIG);
  expect_v1_config((const unsigned char *)&nc.rec, &full);
  memset(&nc, OLD_FILL, sizeof nc);
  nc.rec.struct_size = V1_CONFIG + 8;
  nc.rec.abi_version = KVP_CONFIG_VERSION;
  assert_kvp_ok(kvp_config_from_json(js, strlen(js), &nc.rec));
  expect_guard((const unsigned char *)&nc.rec + V1_CONFIG, sizeof nc.rec - V1_CONFIG);
  expect_v1_config((const unsigned char *)&nc.rec, &full);
  /* a plan whose struct_size is between the versions gets version 1 */
  kvp_plan pm;
  memset(&pm, OLD_FILL, sizeof pm);
  pm.struct_size = V1_PLAN + 8;
  assert_kvp_ok(kvp_config_plan(&full, &pm));
  assert_int_equal(pm.struct_size, V1_PLAN);
  expect_guard((const unsigned char *)&pm + V1_PLAN, sizeof pm - V1_PLAN);
  free(js);
  assert_kvp_ok(kvp_cache_destroy(c));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_shards__keep),
      cmocka_unit_test(test_shards__upcast),
      cmocka_unit_test(test_shards__replicate),
      cmocka_unit_test(test_shards__data_parallel_budget),
      cmocka_unit_test(test_shards__create_rejects_bad_input),
      cmocka_unit_test(test_shards__validate),
      cmocka_unit_test(test_shards__version_1_structs),
      cmocka_unit_test(test_shards__old_callers_buffers_are_not_overrun),
      cmocka_unit_test(test_shards__callers_opt_in_to_version_2),
      cmocka_unit_test(test_shards__json),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
