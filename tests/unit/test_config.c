/* Unit tests of kvpages/config.h: kvp_config_create (both budget modes, reference-compatible and
 * true padded budgeting), derived geometry, padded slices, the plan, validation and every error
 * case of SPEC.md §10 that applies.
 *
 * Budget used by the worked examples (SPEC.md §2.5): device limit 80 GiB, 15 GiB in use,
 * util 0.9, "free" mode -> int(65 GiB * 0.9) - 256 MiB = 62,813,896,704 - 268,435,456
 *                        = 62,545,461,248 B.
 *                        "total" mode -> int(80 GiB * 0.9) - 15 GiB - 256 MiB = 60,934,848,512 B.
 *
 * Formulas (SPEC.md §2.2, §2.3), with L layers, H KV heads, D head dim, S page size, it bytes per
 * element, pack = 4 / it:
 *   reference page bytes  = 2 * L * S * H * D * it
 *   v3 combined heads Cst = align(2H, pack)       (h64: align(H, pack))
 *   v3 groups G           = Cst / pack
 *   v3 storage D          = align(D, 128)         (h64: 128)
 *   true page bytes       = L * S * Cst * Dst * it        (v2: L * S * 2H * D * it)
 *   num_pages             = budget // page bytes
 *   page-size-bytes       = S * align(2H, pack) * cdiv(D,128)*128 * it   (h64 ignored)
 *   slices                = min(prev_pow2(16 MiB // page-size-bytes), 64)
 *   max_num_pages_per_req = cdiv(max_len, S);  max_num_seqs = (524288 // that) // 4
 *   padded slices(T, R)   = round_up(min(2R + T // S, T), slices)
 * Every number in the tables below was worked out by hand from these formulas. */
#include "fail_malloc.h"
#include "support.h"

#include <math.h>
#include <stdio.h>

#define GiB (1024LL * 1024LL * 1024LL)
#define MiB (1024LL * 1024LL)
#define SPEC_FREE_BUDGET 62545461248LL
#define SPEC_TOTAL_BUDGET 60934848512LL

static kvp_memory_stats g_spec_stats; /* 80 GiB limit, 15 GiB in use */

static void init_spec_stats(void) {
  memset(&g_spec_stats, 0, sizeof g_spec_stats);
  g_spec_stats.bytes_limit = 80 * GiB;
  g_spec_stats.bytes_in_use = 15 * GiB;
  g_spec_stats.valid = 1;
}

static kvp_config_options spec_opts(int64_t L, int64_t H, int64_t D, kvp_dtype dt, int64_t S,
                                    int64_t max_len, kvp_layout ver, uint32_t flags) {
  kvp_config_options o;
  assert_kvp_ok(kvp_config_options_init(&o, sizeof o));
  o.num_hidden_layers = L;
  o.num_kv_heads = H;
  o.kv_head_dim_size = D;
  o.max_model_length = max_len;
  o.page_size = S;
  o.kvdtype = dt;
  o.version = ver;
  o.flags = flags;
  o.hbm_utilization = 0.9;
  o.memory_stats = &g_spec_stats;
  o.num_memory_stats = 1;
  return o;
}

/* One model shape with its hand-computed numbers. */
typedef struct shape_case {
  const char *name;
  int64_t L, H, D;
  kvp_dtype dtype;
  int64_t S, max_len;
  kvp_layout version;
  /* expected */
  int64_t ref_page_bytes;  /* 2*L*S*H*D*it (all layers) */
  int64_t np_ref;          /* SPEC_FREE_BUDGET // ref_page_bytes */
  int64_t true_page_bytes; /* L * page bytes of one layer (padding included) */
  int64_t np_true;         /* SPEC_FREE_BUDGET // true_page_bytes */
  int64_t pack, comb, groups, dst;
  uint32_t h64;
  int64_t itemsize;
  int64_t psb, slices; /* kvp_page_size_bytes and the derived slices */
  int64_t max_pages_per_req, max_num_seqs;
  int64_t padded_default; /* T = max_len, R = max_num_seqs */
  int64_t padded_engine;  /* T = max_len, R = 16 */
} shape_case;

/* SPEC.md §2.5 rows A–I (max_len 8192, page 128 unless stated). */
static const shape_case spec_rows[] = {
    /* A: 32 L, 8 KV, D 128, bf16. ref = 2*32*128*8*128*2 = 16,777,216; 62,545,461,248 / that =
     * 3728 exactly. Cst = align(16,2) = 16, G = 8, Dst 128; true = 32*128*16*128*2 = 16,777,216.
     * psb = 128*16*128*2 = 524,288 -> 16 MiB / 524,288 = 32. pages/req = 64, seqs = 8192/4 = 2048.
     * padded: min(4096 + 64, 8192) = 4160 (multiple of 32); engine min(32 + 64, 8192) = 96. */
    {"A", 32, 8, 128, KVP_DTYPE_BF16, 128, 8192, KVP_LAYOUT_V3, 16777216, 3728, 16777216, 3728, 2, 16,
     8, 128, 0, 2, 524288, 32, 64, 2048, 4160, 96},
    /* B: fp32. ref = 33,554,432 -> 1864. pack 1, Cst 16, G 16. psb 1,048,576 -> 16. */
    {"B", 32, 8, 128, KVP_DTYPE_F32, 128, 8192, KVP_LAYOUT_V3, 33554432, 1864, 33554432, 1864, 1, 16,
     16, 128, 0, 4, 1048576, 16, 64, 2048, 4160, 96},
    /* C: fp8. ref = 8,388,608 -> 7456. pack 4, Cst 16, G 4. psb 262,144 -> 64. engine 96 -> 128. */
    {"C", 32, 8, 128, KVP_DTYPE_F8_E4M3FN, 128, 8192, KVP_LAYOUT_V3, 8388608, 7456, 8388608, 7456, 4,
     16, 4, 128, 0, 1, 262144, 64, 64, 2048, 4160, 128},
    /* C': the same with e5m2 ("fp8 (e4m3fn or e5m2)"). */
    {"C-e5m2", 32, 8, 128, KVP_DTYPE_F8_E5M2, 128, 8192, KVP_LAYOUT_V3, 8388608, 7456, 8388608, 7456,
     4, 16, 4, 128, 0, 1, 262144, 64, 64, 2048, 4160, 128},
    /* D: 16 L, 8 KV, D 64, bf16 (h64). ref = 2*16*128*8*64*2 = 4,194,304 -> 14912. Cst =
     * align(8,2) = 8, G 4, Dst 128; true = 16*128*8*128*2 = 4,194,304. psb ignores h64: 524,288. */
    {"D", 16, 8, 64, KVP_DTYPE_BF16, 128, 8192, KVP_LAYOUT_V3, 4194304, 14912, 4194304, 14912, 2, 8, 4,
     128, 1, 2, 524288, 32, 64, 2048, 4160, 96},
    /* E: D 64 fp32. ref 8,388,608 -> 7456. Cst 8, G 8. psb 1,048,576 -> 16. */
    {"E", 16, 8, 64, KVP_DTYPE_F32, 128, 8192, KVP_LAYOUT_V3, 8388608, 7456, 8388608, 7456, 1, 8, 8,
     128, 1, 4, 1048576, 16, 64, 2048, 4160, 96},
    /* F: D 64 fp8. ref 2,097,152 -> 29824. Cst 8, G 2. psb 262,144 -> 64. */
    {"F", 16, 8, 64, KVP_DTYPE_F8_E5M2, 128, 8192, KVP_LAYOUT_V3, 2097152, 29824, 2097152, 29824, 4,
     8, 2, 128, 1, 1, 262144, 64, 64, 2048, 4160, 128},
    /* G: MQA 32 L, 1 KV, D 128, fp8. ref = 2*32*128*1*128 = 1,048,576 -> 59648. Cst = align(2,4)
     * = 4 (2 pad), G 1; true = 32*128*4*128 = 2,097,152 -> 29824. psb 65,536 -> 256 -> 64. */
    {"G", 32, 1, 128, KVP_DTYPE_F8_E4M3FN, 128, 8192, KVP_LAYOUT_V3, 1048576, 59648, 2097152, 29824, 4,
     4, 1, 128, 0, 1, 65536, 64, 64, 2048, 4160, 128},
    /* H: 24 L, 2 KV, D 64, fp8, max len 32768 (h64). ref = 2*24*128*2*64 = 786,432 -> 79530
     * (62,545,461,248 / 786,432 = 79530.6). Cst = align(2,4) = 4, G 1; true = 24*128*4*128 =
     * 1,572,864 -> 39765. psb = 128*4*128 = 65,536 -> 64. pages/req 256, seqs 2048/4 = 512.
     * padded: min(1024 + 256, 32768) = 1280; engine min(32 + 256) = 288 -> 320. */
    {"H", 24, 2, 64, KVP_DTYPE_F8_E5M2, 128, 32768, KVP_LAYOUT_V3, 786432, 79530, 1572864, 39765, 4, 4,
     1, 128, 1, 1, 65536, 64, 256, 512, 1280, 320},
    /* I: 32 L, 32 KV, D 96, bf16, max len 4096. ref = 2*32*128*32*96*2 = 50,331,648 -> 1242
     * (1242.6). Cst 64, G 32, Dst 128; true = 32*128*64*128*2 = 67,108,864 -> 932 (932.0).
     * psb = 128*64*128*2 = 2,097,152 -> 8. pages/req 32, seqs 16384/4 = 4096.
     * padded: min(8192 + 32, 4096) = 4096; engine min(32 + 32, 4096) = 64. */
    {"I", 32, 32, 96, KVP_DTYPE_BF16, 128, 4096, KVP_LAYOUT_V3, 50331648, 1242, 67108864, 932, 2, 64,
     32, 128, 0, 2, 2097152, 8, 32, 4096, 4096, 64},
};

/* More shapes, numbers worked by hand from the formulas above with the same budget. */
static const shape_case extra_rows[] = {
    /* X1: 28 L, 4 KV x 128, fp16, page 16, max len 4096. ref = 2*28*16*4*128*2 = 917,504;
     * 62,545,461,248 / 917,504 = 68169.3 -> 68169. Cst = align(8,2) = 8, G 4, Dst 128; true =
     * 28*16*8*128*2 = 917,504 (no padding) -> 68169. psb = 16*8*128*2 = 32,768 -> 512 -> 64.
     * pages/req = 4096/16 = 256, seqs = (524288/256)/4 = 512. padded: min(1024 + 256, 4096) =
     * 1280; engine min(32 + 256, 4096) = 288 -> 320. */
    {"X1", 28, 4, 128, KVP_DTYPE_F16, 16, 4096, KVP_LAYOUT_V3, 917504, 68169, 917504, 68169, 2, 8, 4,
     128, 0, 2, 32768, 64, 256, 512, 1280, 320},
    /* X2: 18 L, 1 KV x 256 (MQA), bf16, page 64, max len 8192. ref = 2*18*64*1*256*2 = 1,179,648
     * -> 53020.0 (53020 * 1,179,648 = 62,544,936,960 <= budget < 53021 * ...). Cst = align(2,2)
     * = 2, G 1, Dst 256; true = 18*64*2*256*2 = 1,179,648 -> 53020. psb = 64*2*256*2 = 65,536 ->
     * 64. pages/req 128, seqs (524288/128)/4 = 1024. padded: min(2048 + 128, 8192) = 2176;
     * engine min(32 + 128) = 160 -> 192. */
    {"X2", 18, 1, 256, KVP_DTYPE_BF16, 64, 8192, KVP_LAYOUT_V3, 1179648, 53020, 1179648, 53020, 2, 2,
     1, 256, 0, 2, 65536, 64, 128, 1024, 2176, 192},
    /* X3: 24 L, 16 KV x 80, fp16, page 256, max len 2048. ref = 2*24*256*16*80*2 = 31,457,280 ->
     * 1988 (1988.3). Cst 32, G 16, Dst 128 (80 padded); true = 24*256*32*128*2 = 50,331,648 ->
     * 1242 (1242.6). psb = 256*32*128*2 = 2,097,152 -> 8. pages/req 8, seqs (524288/8)/4 =
     * 16384. padded: min(32768 + 8, 2048) = 2048; engine min(32 + 8) = 40 (multiple of 8). */
    {"X3", 24, 16, 80, KVP_DTYPE_F16, 256, 2048, KVP_LAYOUT_V3, 31457280, 1988, 50331648, 1242, 2, 32,
     16, 128, 0, 2, 2097152, 8, 8, 16384, 2048, 40},
    /* X4: 12 L, 3 KV x 64 (h64, odd H), fp8_e4m3fn, page 32, max len 1000. ref = 2*12*32*3*64 =
     * 147,456 -> 424163 (424163.3). h64: Cst = align(3,4) = 4, G 1, Dst 128; true =
     * 12*32*4*128 = 196,608 -> 318122 (318122.3). psb (generic formula) = 32*align(6,4)=8*128 =
     * 32,768 -> 512 -> 64. pages/req cdiv(1000,32) = 32, seqs (524288/32)/4 = 4096.
     * padded: min(8192 + 31, 1000) = 1000 -> 1024; engine min(32 + 31, 1000) = 63 -> 64. */
    {"X4", 12, 3, 64, KVP_DTYPE_F8_E4M3FN, 32, 1000, KVP_LAYOUT_V3, 147456, 424163, 196608, 318122, 4,
     4, 1, 128, 1, 1, 32768, 64, 32, 4096, 1024, 64},
    /* X5: 10 L, 2 KV x 96, fp32, page 16, v2, max len 3000. ref = 2*10*16*2*96*4 = 245,760 ->
     * 254498 (254498.6). v2: comb = groups = 2H = 4, Dst = D = 96 (no padding); true = 10*16*4*96*4
     * = 245,760 -> 254498. psb (v3 formula) = 16*4*128*4 = 32,768 -> 64. pages/req =
     * cdiv(3000,16) = 188, seqs = (524288/188 = 2788)/4 = 697. padded: min(1394 + 187, 3000) = 1581
     * -> 1600; engine min(32 + 187) = 219 -> 256. */
    {"X5", 10, 2, 96, KVP_DTYPE_F32, 16, 3000, KVP_LAYOUT_V2, 245760, 254498, 245760, 254498, 1, 4, 4,
     96, 0, 4, 32768, 64, 188, 697, 1600, 256},
    /* X6: 40 L, 5 KV x 192, fp8_e5m2, page 128, max len 16384. ref = 2*40*128*5*192 = 9,830,400 ->
     * 6362 (6362.5). Cst = align(10,4) = 12 (2 pad), G 3, Dst 256; true = 40*128*12*256 =
     * 15,728,640 -> 3976 (3976.6). psb = 128*12*256 = 393,216 -> 42 -> 32. pages/req 128,
     * seqs 1024. padded: min(2048 + 128, 16384) = 2176; engine min(32 + 128) = 160. */
    {"X6", 40, 5, 192, KVP_DTYPE_F8_E5M2, 128, 16384, KVP_LAYOUT_V3, 9830400, 6362, 15728640, 3976, 4,
     12, 3, 256, 0, 1, 393216, 32, 128, 1024, 2176, 160},
};

static void check_config_fields(const shape_case *c, const kvp_config *cfg, int64_t np,
                                kvp_layout version) {
  assert_int_equal(cfg->struct_size, sizeof(kvp_config));
  assert_int_equal(cfg->abi_version, KVP_CONFIG_VERSION);
  assert_int_equal(cfg->num_hidden_layers, c->L);
  assert_int_equal(cfg->max_model_length, c->max_len);
  assert_int_equal(cfg->num_kv_heads, c->H);
  assert_int_equal(cfg->k_headdim, c->D);
  assert_int_equal(cfg->v_headdim, c->D);
  assert_true(cfg->hbm_utilization == 0.9);
  assert_int_equal(cfg->page_size, c->S);
  if (cfg->num_pages != np) fail_msg("%s: num_pages %lld, expected %lld", c->name, (long long)cfg->num_pages, (long long)np);
  assert_int_equal(cfg->max_num_pages_per_req, c->max_pages_per_req);
  assert_int_equal(cfg->num_slices_per_kv_cache_update_page, c->slices);
  assert_true(cfg->max_num_tokens == -1);
  assert_true(cfg->max_num_reqs == -1);
  assert_int_equal(cfg->version, version);
  assert_int_equal(cfg->kvdtype, c->dtype);
}

static void check_layout(const shape_case *c, const kvp_config *cfg) {
  kvp_layout_info li;
  memset(&li, 0xEE, sizeof li);
  li.struct_size = sizeof li;
  assert_kvp_ok(kvp_config_get_layout(cfg, &li));
  const int64_t np = cfg->num_pages;
  assert_int_equal(li.struct_size, sizeof li);
  assert_int_equal(li.kv_head_packing, c->pack);
  assert_int_equal(li.itemsize, c->itemsize);
  assert_true(li.max_num_seqs == c->max_num_seqs);
  if (cfg->version == KVP_LAYOUT_V3) {
    assert_int_equal(li.is_h64, c->h64);
    assert_int_equal(li.storage_num_combined_kv_heads, c->comb);
    assert_int_equal(li.storage_num_kv_groups, c->groups);
    assert_int_equal(li.storage_head_dim, c->dst);
    assert_int_equal(li.ndim, 5);
    assert_true(li.shape[0] == np);
    assert_true(li.shape[1] == c->S);
    assert_true(li.shape[2] == c->groups);
    assert_true(li.shape[3] == c->pack);
    assert_true(li.shape[4] == c->dst);
    assert_true(li.page_bytes_per_layer == c->S * c->groups * c->pack * c->dst * c->itemsize);
  } else {
    assert_int_equal(li.is_h64, 0);
    assert_int_equal(li.storage_num_combined_kv_heads, 2 * c->H);
    assert_int_equal(li.storage_num_kv_groups, 2 * c->H);
    assert_int_equal(li.storage_head_dim, c->D);
    assert_int_equal(li.ndim, 4);
    assert_true(li.shape[0] == np);
    assert_true(li.shape[1] == c->S);
    assert_true(li.shape[2] == 2 * c->H);
    assert_true(li.shape[3] == c->D);
    assert_true(li.shape[4] == 0);
    assert_true(li.page_bytes_per_layer == c->S * 2 * c->H * c->D * c->itemsize);
  }
  assert_true(li.layer_bytes == np * li.page_bytes_per_layer);
}

/* kvp_config_plan numbers, from the header's definitions. */
static void check_plan(const shape_case *c, const kvp_config *cfg, int64_t true_page_bytes) {
  kvp_plan p;
  memset(&p, 0xEE, sizeof p);
  p.struct_size = sizeof p;
  assert_kvp_ok(kvp_config_plan(cfg, &p));
  const int64_t np = cfg->num_pages;
  assert_true(p.num_pages == np);
  assert_true(p.usable_pages == np - 1);
  assert_true(p.page_size == c->S);
  assert_true(p.bytes_per_page == true_page_bytes);
  assert_true(p.reference_bytes_per_page == c->ref_page_bytes);
  assert_true(p.bytes_per_token == true_page_bytes / c->S);
  assert_true(p.total_bytes == np * true_page_bytes);
  assert_true(p.token_capacity == (np - 1) * c->S);
  assert_true(p.max_concurrent_seqs == (np - 1) / c->max_pages_per_req);
  assert_true(p.max_num_seqs == c->max_num_seqs);
}

static void check_padded(const shape_case *c, const kvp_config *cfg) {
  int64_t n = -7;
  assert_kvp_ok(kvp_config_padded_num_slices(cfg, 0, 0, &n));
  if (n != c->padded_default) fail_msg("%s: padded default %lld, expected %lld", c->name, (long long)n, (long long)c->padded_default);
  assert_kvp_ok(kvp_config_padded_num_slices(cfg, c->max_len, 16, &n));
  if (n != c->padded_engine) fail_msg("%s: padded engine %lld, expected %lld", c->name, (long long)n, (long long)c->padded_engine);
  /* negative arguments mean "default" as well */
  assert_kvp_ok(kvp_config_padded_num_slices(cfg, -1, -5, &n));
  assert_true(n == c->padded_default);
}

/* The reference's page-size-bytes (v3 formula, h64 ignored) and the slices derived from it. */
static void check_page_size_bytes(const shape_case *c) {
  int64_t psb = -1, slices = -1;
  assert_kvp_ok(kvp_page_size_bytes(c->S, c->H, c->D, c->dtype, &psb));
  if (psb != c->psb) fail_msg("%s: page_size_bytes %lld, expected %lld", c->name, (long long)psb, (long long)c->psb);
  assert_kvp_ok(kvp_num_slices_per_kv_cache_update_page(psb, &slices));
  assert_int_equal(slices, c->slices);
  int64_t pack = -1;
  assert_kvp_ok(kvp_dtype_packing(c->dtype, &pack));
  assert_int_equal(pack, c->pack);
}

static void run_case(const shape_case *c) {
  kvp_config cfg;
  check_page_size_bytes(c);
  /* reference-compatible budgeting */
  kvp_config_options o = spec_opts(c->L, c->H, c->D, c->dtype, c->S, c->max_len, c->version,
                                   KVP_CONFIG_FLAG_REFERENCE_BUDGET);
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  check_config_fields(c, &cfg, c->np_ref, c->version);
  check_layout(c, &cfg);
  check_plan(c, &cfg, c->true_page_bytes);
  check_padded(c, &cfg);
  assert_kvp_ok(kvp_config_validate(&cfg));
  /* default: true padded budgeting */
  o = spec_opts(c->L, c->H, c->D, c->dtype, c->S, c->max_len, c->version, 0);
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  check_config_fields(c, &cfg, c->np_true, c->version);
  check_layout(c, &cfg);
  check_plan(c, &cfg, c->true_page_bytes);
  check_padded(c, &cfg);
  /* true budgeting never allocates more than the budget; the reference one does when padded */
  assert_true(c->np_true * c->true_page_bytes <= SPEC_FREE_BUDGET);
  assert_true((c->np_true + 1) * c->true_page_bytes > SPEC_FREE_BUDGET);
  assert_true(c->np_ref * c->ref_page_bytes <= SPEC_FREE_BUDGET);
  assert_true((c->np_ref + 1) * c->ref_page_bytes > SPEC_FREE_BUDGET);
  /* the v2 layout of the same model: 2H heads of D lanes, never padded, so both budgets agree */
  shape_case v2 = *c;
  v2.version = KVP_LAYOUT_V2;
  o = spec_opts(c->L, c->H, c->D, c->dtype, c->S, c->max_len, KVP_LAYOUT_V2, KVP_CONFIG_FLAG_REFERENCE_BUDGET);
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  check_config_fields(&v2, &cfg, c->np_ref, KVP_LAYOUT_V2);
  check_layout(&v2, &cfg);
  check_plan(&v2, &cfg, c->ref_page_bytes);
  o = spec_opts(c->L, c->H, c->D, c->dtype, c->S, c->max_len, KVP_LAYOUT_V2, 0);
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  check_config_fields(&v2, &cfg, c->np_ref, KVP_LAYOUT_V2);
}

static void test_config__spec_rows_a_to_i(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof spec_rows / sizeof spec_rows[0]; i++) {
    if (spec_rows[i].version == KVP_LAYOUT_V3) run_case(&spec_rows[i]);
  }
}

static void test_config__extra_model_shapes(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof extra_rows / sizeof extra_rows[0]; i++) {
    const shape_case *c = &extra_rows[i];
    if (c->version == KVP_LAYOUT_V3) {
      run_case(c);
    } else {
      kvp_config cfg;
      check_page_size_bytes(c);
      kvp_config_options o = spec_opts(c->L, c->H, c->D, c->dtype, c->S, c->max_len, c->version,
                                       KVP_CONFIG_FLAG_REFERENCE_BUDGET);
      assert_kvp_ok(kvp_config_create(&o, &cfg));
      check_config_fields(c, &cfg, c->np_ref, c->version);
      check_layout(c, &cfg);
      check_plan(c, &cfg, c->true_page_bytes);
      check_padded(c, &cfg);
      o = spec_opts(c->L, c->H, c->D, c->dtype, c->S, c->max_len, c->version, 0);
      assert_kvp_ok(kvp_config_create(&o, &cfg));
      check_config_fields(c, &cfg, c->np_true, c->version);
    }
  }
}

/* Row I (and G, H, X3, X4, X6) are padded: the true budgeting gives fewer pages and fits. */
static void test_config__true_budget_gives_fewer_pages_for_padded_shapes(void **state) {
  (void)state;
  kvp_config ref, tru;
  kvp_config_options o = spec_opts(32, 32, 96, KVP_DTYPE_BF16, 128, 4096, KVP_LAYOUT_V3,
                                   KVP_CONFIG_FLAG_REFERENCE_BUDGET);
  assert_kvp_ok(kvp_config_create(&o, &ref));
  o.flags = 0;
  assert_kvp_ok(kvp_config_create(&o, &tru));
  assert_int_equal(ref.num_pages, 1242);
  assert_int_equal(tru.num_pages, 932);
  kvp_plan pr, pt;
  pr.struct_size = sizeof pr;
  pt.struct_size = sizeof pt;
  assert_kvp_ok(kvp_config_plan(&ref, &pr));
  assert_kvp_ok(kvp_config_plan(&tru, &pt));
  /* the reference's pages really take 1242 * 67,108,864 = 83,349,209,088 B (x1.33 the budget) */
  assert_true(pr.total_bytes == 83349209088LL);
  assert_true(pr.total_bytes > SPEC_FREE_BUDGET);
  assert_true(pt.total_bytes == 932LL * 67108864LL);
  assert_true(pt.total_bytes <= SPEC_FREE_BUDGET);
  /* row A has no padding: both agree */
  o = spec_opts(32, 8, 128, KVP_DTYPE_BF16, 128, 8192, KVP_LAYOUT_V3, KVP_CONFIG_FLAG_REFERENCE_BUDGET);
  assert_kvp_ok(kvp_config_create(&o, &ref));
  o.flags = 0;
  assert_kvp_ok(kvp_config_create(&o, &tru));
  assert_int_equal(ref.num_pages, tru.num_pages);
  /* row A total v3 memory = 3728 * 524,288 * 32 = exactly the budget */
  assert_kvp_ok(kvp_config_plan(&tru, &pt));
  assert_true(pt.total_bytes == SPEC_FREE_BUDGET);
}

static void test_config__total_budget_mode(void **state) {
  (void)state;
  kvp_config cfg;
  kvp_config_options o = spec_opts(32, 8, 128, KVP_DTYPE_BF16, 128, 8192, KVP_LAYOUT_V3,
                                   KVP_CONFIG_FLAG_REFERENCE_BUDGET);
  o.budget_mode = KVP_BUDGET_TOTAL;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  /* 60,934,848,512 / 16,777,216 = 3632 */
  assert_int_equal(cfg.num_pages, 3632);
  o.flags = 0;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 3632);
  /* row I in total mode: ref 60,934,848,512 / 50,331,648 = 1210.67 -> 1210; true / 67,108,864 =
   * 908.0 -> 908 */
  o = spec_opts(32, 32, 96, KVP_DTYPE_BF16, 128, 4096, KVP_LAYOUT_V3, KVP_CONFIG_FLAG_REFERENCE_BUDGET);
  o.budget_mode = KVP_BUDGET_TOTAL;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 1210);
  o.flags = 0;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 908);
  /* explicit free mode = default */
  o.budget_mode = KVP_BUDGET_FREE;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 932);
}

static void test_config__fallback_budget_when_no_device_reports(void **state) {
  (void)state;
  kvp_memory_stats none;
  memset(&none, 0, sizeof none); /* valid = 0: the device did not report */
  none.bytes_limit = 80 * GiB;
  kvp_config cfg;
  kvp_config_options o = spec_opts(32, 8, 128, KVP_DTYPE_BF16, 128, 8192, KVP_LAYOUT_V3,
                                   KVP_CONFIG_FLAG_REFERENCE_BUDGET);
  o.memory_stats = &none;
  o.num_memory_stats = 1;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  /* 4 GiB / 16 MiB = 256 */
  assert_int_equal(cfg.num_pages, 256);
  o.budget_mode = KVP_BUDGET_TOTAL;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 256);
  /* row I fallback with true budgeting: 4 GiB / 64 MiB = 64; reference 4 GiB / 48 MiB = 85 */
  o = spec_opts(32, 32, 96, KVP_DTYPE_BF16, 128, 4096, KVP_LAYOUT_V3, 0);
  o.memory_stats = &none;
  o.num_memory_stats = 1;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 64);
  o.flags = KVP_CONFIG_FLAG_REFERENCE_BUDGET;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 85);
}

static void test_config__budget_knobs(void **state) {
  (void)state;
  kvp_config cfg;
  kvp_config_options o = spec_opts(32, 8, 128, KVP_DTYPE_BF16, 128, 8192, KVP_LAYOUT_V3, 0);
  /* no margin: 62,813,896,704 / 16 MiB = 3744 */
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 3744);
  /* 1 GiB margin: 3744 - 64 = 3680 */
  o.flags = 0;
  o.safety_margin_bytes = GiB;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 3680);
  /* NO_SAFETY_MARGIN overrides safety_margin_bytes */
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 3744);
  /* util 0.5: (32,500 MiB - 256 MiB) / 16 MiB = 2064 */
  o = spec_opts(32, 8, 128, KVP_DTYPE_BF16, 128, 8192, KVP_LAYOUT_V3, 0);
  o.hbm_utilization = 0.5;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 2064);
  assert_true(cfg.hbm_utilization == 0.5);
  /* util 0 = default 0.9 */
  o.hbm_utilization = 0.0;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 3728);
  assert_true(cfg.hbm_utilization == 0.9);
  /* KV heads sharded over 2 devices: the budget doubles -> 7456 */
  o.kv_head_shards = 2;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 7456);
  /* explicit budget: exactly 10 pages of 16 MiB (+ 1 byte), statistics ignored */
  o = spec_opts(32, 8, 128, KVP_DTYPE_BF16, 128, 8192, KVP_LAYOUT_V3, KVP_CONFIG_FLAG_NO_SAFETY_MARGIN);
  o.budget_bytes = 10 * 16 * MiB + 1;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 10);
  o.memory_stats = NULL;
  o.num_memory_stats = 0;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 10);
  /* exactly one page is enough (num_pages = 1: only the null page) */
  o.budget_bytes = 16 * MiB;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 1);
  /* hints are stored; 0 means unset (-1) */
  o.max_num_tokens = 2048;
  o.max_num_reqs = 64;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_true(cfg.max_num_tokens == 2048);
  assert_true(cfg.max_num_reqs == 64);
}

static void test_config__head_dim_defaults(void **state) {
  (void)state;
  kvp_config cfg;
  /* only k_headdim given: kv_head_dim_size and v_headdim follow it */
  kvp_config_options o = spec_opts(32, 8, 0, KVP_DTYPE_BF16, 128, 8192, KVP_LAYOUT_V3,
                                   KVP_CONFIG_FLAG_REFERENCE_BUDGET);
  o.k_headdim = 128;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.k_headdim, 128);
  assert_int_equal(cfg.v_headdim, 128);
  assert_int_equal(cfg.num_pages, 3728);
  /* kv_head_dim_size given, k/v 0: both take it */
  o = spec_opts(16, 8, 64, KVP_DTYPE_BF16, 128, 8192, KVP_LAYOUT_V3, KVP_CONFIG_FLAG_REFERENCE_BUDGET);
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.k_headdim, 64);
  assert_int_equal(cfg.v_headdim, 64);
  assert_int_equal(cfg.num_pages, 14912);
}

/* A zeroed options struct with size, version, the model fields and a budget is valid and gets the
 * reference defaults (page 128, util 0.9, bf16, v3). */
static void test_config__zeroed_options_get_defaults(void **state) {
  (void)state;
  kvp_config_options o;
  memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.abi_version = KVP_CONFIG_OPTIONS_VERSION;
  o.num_hidden_layers = 2;
  o.num_kv_heads = 2;
  o.kv_head_dim_size = 128;
  o.max_model_length = 1000;
  o.budget_bytes = 100 * MiB;
  kvp_config cfg;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.page_size, 128);
  assert_true(cfg.hbm_utilization == 0.9);
  assert_int_equal(cfg.kvdtype, KVP_DTYPE_BF16);
  assert_int_equal(cfg.version, KVP_LAYOUT_V3);
  assert_int_equal(cfg.max_num_pages_per_req, 8); /* cdiv(1000, 128) */
  /* true page bytes = 2 L * 128 * align(4,2)=4 * 128 * 2 = 262,144; with the 256 MiB margin the
   * 100 MiB budget would be empty, so the explicit budget must not have the margin subtracted or
   * must be rejected -- either way, without margin it is 400 pages. */
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, 400);
  /* the static initialiser equals the init function */
  kvp_config_options a = KVP_CONFIG_OPTIONS_INIT, b;
  memset(&b, 0x77, sizeof b);
  assert_kvp_ok(kvp_config_options_init(&b, sizeof b));
  assert_memory_equal(&a, &b, sizeof a);
}

static void test_config__config_init_defaults(void **state) {
  (void)state;
  kvp_config c;
  memset(&c, 0x55, sizeof c);
  assert_kvp_ok(kvp_config_init(&c, sizeof c));
  assert_int_equal(c.struct_size, sizeof c);
  assert_int_equal(c.abi_version, KVP_CONFIG_VERSION);
  assert_true(c.num_hidden_layers == 0 && c.max_model_length == 0 && c.num_kv_heads == 0);
  assert_true(c.k_headdim == 0 && c.v_headdim == 0);
  assert_true(c.hbm_utilization == 0.9);
  assert_true(c.page_size == 128);
  assert_true(c.num_pages == -1 && c.max_num_pages_per_req == -1);
  assert_true(c.num_slices_per_kv_cache_update_page == -1);
  assert_true(c.max_num_tokens == -1 && c.max_num_reqs == -1);
  assert_int_equal(c.version, KVP_LAYOUT_V3);
  assert_int_equal(c.kvdtype, KVP_DTYPE_BF16);
  kvp_config s = KVP_CONFIG_INIT;
  assert_memory_equal(&s, &c, sizeof c);
}

/* ---- padded slices ------------------------------------------------------------------------- */

static void test_config__padded_num_slices_argument_precedence(void **state) {
  (void)state;
  kvp_config cfg;
  kvp_config_options o = spec_opts(32, 8, 128, KVP_DTYPE_BF16, 128, 8192, KVP_LAYOUT_V3, 0);
  o.max_num_tokens = 1000;
  o.max_num_reqs = 8;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  int64_t n = -1;
  /* config hints: T = 1000, R = 8 -> min(16 + 7, 1000) = 23 -> 32 */
  assert_kvp_ok(kvp_config_padded_num_slices(&cfg, 0, 0, &n));
  assert_int_equal(n, 32);
  /* arguments win: T = 4096, R = 100 -> min(200 + 32, 4096) = 232 -> 256 */
  assert_kvp_ok(kvp_config_padded_num_slices(&cfg, 4096, 100, &n));
  assert_int_equal(n, 256);
  /* T smaller than the slice bound: T = 50, R = 100 -> min(200, 50) = 50 -> 64 */
  assert_kvp_ok(kvp_config_padded_num_slices(&cfg, 50, 100, &n));
  assert_int_equal(n, 64);
  /* only R given: T from the hint 1000, R = 40 -> min(80 + 7, 1000) = 87 -> 96 */
  assert_kvp_ok(kvp_config_padded_num_slices(&cfg, 0, 40, &n));
  assert_int_equal(n, 96);
  /* a hand-made config with slices = 1: no rounding. T = 300, R = 3 -> min(6 + 2, 300) = 8 */
  cfg.num_slices_per_kv_cache_update_page = 32;
  assert_kvp_ok(kvp_config_padded_num_slices(&cfg, 300, 3, &n));
  assert_int_equal(n, 32);
}

static void test_config__padded_num_slices_rejects_uncomputed_slices(void **state) {
  (void)state;
  kvp_config cfg;
  assert_kvp_ok(kvp_config_init(&cfg, sizeof cfg));
  cfg.num_hidden_layers = 32;
  cfg.num_kv_heads = 8;
  cfg.k_headdim = cfg.v_headdim = 128;
  cfg.max_model_length = 8192;
  int64_t n = 12345;
  /* slices = -1 ("not computed"): the reference silently rounds 96 to 94; we refuse */
  assert_kvp_status(kvp_config_padded_num_slices(&cfg, 8192, 16, &n), KVP_ERR_INVALID_ARGUMENT,
                    "num_slices_per_kv_cache_update_page");
  assert_int_equal(n, 12345);
  assert_kvp_status(kvp_config_padded_num_slices(&cfg, 8192, 16, NULL), KVP_ERR_INVALID_ARGUMENT, "");
  assert_kvp_status(kvp_config_padded_num_slices(NULL, 8192, 16, &n), KVP_ERR_INVALID_ARGUMENT, "");
  assert_int_equal(n, 12345);
}

/* get_max_num_seqs vs max_model_length (page 128), SPEC §2.5: 2048 -> 8192; 4096 -> 4096;
 * 8192 -> 2048; 32768 -> 512; 131072 -> 128. */
static void test_config__max_num_seqs_table(void **state) {
  (void)state;
  static const int64_t lens[] = {2048, 4096, 8192, 32768, 131072, 1000, 129};
  /* 1000 -> cdiv = 8 -> 65536/4 = 16384; 129 -> 2 pages -> 262144/4 = 65536 */
  static const int64_t seqs[] = {8192, 4096, 2048, 512, 128, 16384, 65536};
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    kvp_config cfg;
    kvp_config_options o = spec_opts(32, 8, 128, KVP_DTYPE_BF16, 128, lens[i], KVP_LAYOUT_V3, 0);
    assert_kvp_ok(kvp_config_create(&o, &cfg));
    kvp_layout_info li;
    li.struct_size = sizeof li;
    assert_kvp_ok(kvp_config_get_layout(&cfg, &li));
    assert_true(li.max_num_seqs == seqs[i]);
    kvp_plan p;
    p.struct_size = sizeof p;
    assert_kvp_ok(kvp_config_plan(&cfg, &p));
    assert_true(p.max_num_seqs == seqs[i]);
  }
}

/* ---- errors of kvp_config_create (SPEC §10) -------------------------------------------------- */

#define FILL 0x5C

static void expect_create_error(const kvp_config_options *o, kvp_status code, const char *substr) {
  kvp_config out, before;
  memset(&out, FILL, sizeof out);
  memcpy(&before, &out, sizeof out);
  kvp_config_options copy = *o;
  kvp_status s = kvp_config_create(o, &out);
  if (s != code)
    fail_msg("expected %s ('%s'), got %s: %s", kvp_status_name(code), substr, kvp_status_name(s),
             kvp_last_error_message());
  if (strstr(kvp_last_error_message(), substr) == NULL)
    fail_msg("message '%s' lacks '%s'", kvp_last_error_message(), substr);
  assert_true(kvp_last_error_message()[0] != '\0');
  assert_memory_equal(&out, &before, sizeof out);       /* output unchanged */
  assert_memory_equal(&copy, o, sizeof copy);           /* input untouched */
}

static kvp_config_options good_opts(void) {
  return spec_opts(32, 8, 128, KVP_DTYPE_BF16, 128, 8192, KVP_LAYOUT_V3, 0);
}

static void test_config__create_rejects_bad_model_fields(void **state) {
  (void)state;
  kvp_config_options o;
  o = good_opts(); o.num_hidden_layers = 0;   expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "num_hidden_layers");
  o = good_opts(); o.num_hidden_layers = -3;  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "num_hidden_layers");
  o = good_opts(); o.num_kv_heads = 0;        expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "num_kv_heads");
  o = good_opts(); o.num_kv_heads = -8;       expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "num_kv_heads");
  o = good_opts(); o.max_model_length = 0;    expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "max_model_length");
  o = good_opts(); o.max_model_length = -1;   expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "max_model_length");
  /* neither kv_head_dim_size nor k_headdim */
  o = good_opts(); o.kv_head_dim_size = 0;    expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "head");
  o = good_opts(); o.kv_head_dim_size = -128; expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "kv_head_dim_size");
  o = good_opts(); o.k_headdim = -64;         expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "k_headdim");
  o = good_opts(); o.v_headdim = -64;         expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "v_headdim");
  /* k_headdim != v_headdim */
  o = good_opts(); o.k_headdim = 128; o.v_headdim = 64;
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "v_headdim");
  o = good_opts(); o.v_headdim = 96;          expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "v_headdim");
}

static void test_config__create_rejects_bad_page_size_and_utilization(void **state) {
  (void)state;
  kvp_config_options o;
  o = good_opts(); o.page_size = -128; expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "page_size");
  /* page size must be a multiple of the packing */
  o = good_opts(); o.page_size = 127;  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "page_size");
  o = good_opts(); o.page_size = 130; o.kvdtype = KVP_DTYPE_F8_E4M3FN;
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "page_size");
  o.page_size = 132; /* 132 % 4 == 0: fine */
  kvp_config cfg;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.page_size, 132);
  o = good_opts(); o.page_size = 1; o.kvdtype = KVP_DTYPE_F32; /* packing 1: any page size */
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  o = good_opts(); o.hbm_utilization = 1.5;  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "hbm_utilization");
  o = good_opts(); o.hbm_utilization = -0.1; expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "hbm_utilization");
  o = good_opts(); o.hbm_utilization = NAN;  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "hbm_utilization");
  o = good_opts(); o.hbm_utilization = 1.0;  /* the upper bound is included */
  assert_kvp_ok(kvp_config_create(&o, &cfg));
}

static void test_config__create_rejects_page_over_16mib(void **state) {
  (void)state;
  /* page 2048 x 32 combined x 128 x fp32 = 32 MiB per layer (SPEC §10) */
  kvp_config_options o = good_opts();
  o.page_size = 2048;
  o.num_kv_heads = 16;
  o.kvdtype = KVP_DTYPE_F32;
  o.budget_bytes = 1LL << 50;
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "Number of slices should be positive");
  /* just above 16 MiB with the reference helper: 16 MiB + 2048*... use 4097 fp32 tokens, 16 combined */
  o = good_opts();
  o.page_size = 4097;
  o.num_kv_heads = 8;
  o.kvdtype = KVP_DTYPE_F32;
  o.budget_bytes = 1LL << 50;
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "Number of slices should be positive");
  /* exactly 16 MiB is allowed (1 slice): 4096 * 16 * 128 * 2 */
  o = good_opts();
  o.page_size = 4096;
  o.budget_bytes = 1LL << 50;
  kvp_config cfg;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_slices_per_kv_cache_update_page, 1);
}

static void test_config__create_rejects_empty_pool(void **state) {
  (void)state;
  kvp_config_options o = good_opts();
  /* one byte less than one page over all layers (16 MiB): num_pages = 0 */
  o.budget_bytes = 16 * MiB - 1;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "num_pages");
  /* statistics leave nothing after the margin */
  kvp_memory_stats tiny;
  memset(&tiny, 0, sizeof tiny);
  tiny.bytes_limit = 200 * MiB;
  tiny.valid = 1;
  o = good_opts();
  o.memory_stats = &tiny;
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "num_pages");
}

static void test_config__create_rejects_bad_dtype_layout_and_flags(void **state) {
  (void)state;
  kvp_config_options o;
  o = good_opts(); o.kvdtype = 99u;                     expect_create_error(&o, KVP_ERR_NOT_FOUND, "99");
  o = good_opts(); o.kvdtype = KVP_DTYPE_F64;           expect_create_error(&o, KVP_ERR_UNSUPPORTED, "fp64");
  o = good_opts(); o.kvdtype = KVP_DTYPE_F8_E4M3FNUZ;   expect_create_error(&o, KVP_ERR_UNSUPPORTED, "fp8_e4m3fnuz");
  o = good_opts(); o.kvdtype = KVP_DTYPE_F8_E4M3B11FNUZ; expect_create_error(&o, KVP_ERR_UNSUPPORTED, "fp8_e4m3b11fnuz");
  o = good_opts(); o.kvdtype = KVP_DTYPE_F8_E5M2FNUZ;   expect_create_error(&o, KVP_ERR_UNSUPPORTED, "fp8_e5m2fnuz");
  o = good_opts(); o.version = 1u;                      expect_create_error(&o, KVP_ERR_NOT_FOUND, "version");
  o = good_opts(); o.version = 7u;                      expect_create_error(&o, KVP_ERR_NOT_FOUND, "version");
  o = good_opts(); o.flags = 1u << 9;                   expect_create_error(&o, KVP_ERR_UNSUPPORTED, "flags");
  o = good_opts(); o._reserved0 = 1;                    expect_create_error(&o, KVP_ERR_UNSUPPORTED, "");
  o = good_opts(); o.budget_mode = 7u;                  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "mode");
  o = good_opts(); o.budget_bytes = -1;                 expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "budget_bytes");
  o = good_opts(); o.safety_margin_bytes = -1;          expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "safety_margin");
  o = good_opts(); o.kv_head_shards = -2;               expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "kv_head_shards");
  o = good_opts(); o.memory_stats = NULL; o.num_memory_stats = 3;
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "memory");
#if !KVP_HAS_CUDA
  o = good_opts(); o.memory_stats = NULL; o.num_memory_stats = 0; o.device_type = KVP_DEVICE_CUDA;
  expect_create_error(&o, KVP_ERR_NO_DEVICE, "");
#endif
  o = good_opts(); o.memory_stats = NULL; o.num_memory_stats = 0; o.device_type = 77;
  expect_create_error(&o, KVP_ERR_INVALID_ARGUMENT, "77");
}

static void test_config__create_rejects_bad_struct_versions(void **state) {
  (void)state;
  kvp_config_options o = good_opts();
  o.struct_size = 8;
  expect_create_error(&o, KVP_ERR_VERSION_MISMATCH, "struct_size");
  o = good_opts(); o.abi_version = 0;
  expect_create_error(&o, KVP_ERR_VERSION_MISMATCH, "abi_version");
  o = good_opts(); o.abi_version = KVP_CONFIG_OPTIONS_VERSION + 1;
  expect_create_error(&o, KVP_ERR_VERSION_MISMATCH, "abi_version");
  kvp_config out;
  memset(&out, FILL, sizeof out);
  assert_kvp_status(kvp_config_create(NULL, &out), KVP_ERR_INVALID_ARGUMENT, "");
  o = good_opts();
  assert_kvp_status(kvp_config_create(&o, NULL), KVP_ERR_INVALID_ARGUMENT, "");
}

/* Budgeting uses only reads: the default CPU path (no statistics injected) works and is sane. */
static void test_config__create_with_cpu_statistics(void **state) {
  (void)state;
  kvp_config_options o;
  assert_kvp_ok(kvp_config_options_init(&o, sizeof o));
  o.num_hidden_layers = 1;
  o.num_kv_heads = 1;
  o.kv_head_dim_size = 128;
  o.max_model_length = 256;
  o.page_size = 16;
  o.kvdtype = KVP_DTYPE_F32;
  o.hbm_utilization = 0.5;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  kvp_config cfg;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  kvp_memory_stats m;
  assert_kvp_ok(kvp_device_memory_stats(KVP_DEVICE_CPU, 0, &m));
  /* a page of this config is 16 * 2 * 128 * 4 = 16 KiB; half the host's memory in pages is
   * > 0 and does not exceed half the limit */
  int64_t limit = m.bytes_limit ? m.bytes_limit : (m.bytes_reservable_limit ? m.bytes_reservable_limit : m.bytes_total);
  assert_true(cfg.num_pages > 0);
  assert_true(cfg.num_pages * 16384 <= limit / 2 + 16384);
}

/* Issue 17, defect 13: with memory exhausted, the host statistics read reported KVP_ERR_IO (stdio
 * could not allocate its FILE). The read allocates nothing, so it works with every malloc failing,
 * and so does a config budgeted from host memory. */
static void test_config__host_memory_read_needs_no_allocation(void **state) {
  (void)state;
  if (!kvp_test_fail_malloc_available()) skip();
  kvp_memory_stats want, m;
  assert_kvp_ok(kvp_device_memory_stats(KVP_DEVICE_CPU, 0, &want));
  memset(&m, 0, sizeof m);
  kvp_test_fail_malloc_arm(0, 0);
  const kvp_status st = kvp_device_memory_stats(KVP_DEVICE_CPU, 0, &m);
  const long calls = kvp_test_fail_malloc_disarm();
  assert_kvp_ok(st);
  assert_int_equal(calls, 0);
  assert_int_equal(m.valid, 1);
  assert_int_equal(m.bytes_total, want.bytes_total);
  kvp_config_options o = spec_opts(1, 1, 128, KVP_DTYPE_F32, 16, 256, KVP_LAYOUT_V3, 0);
  kvp_config cfg;
  kvp_test_fail_malloc_arm(0, 0);
  const kvp_status planned = kvp_config_create(&o, &cfg);
  kvp_test_fail_malloc_disarm();
  assert_kvp_ok(planned);
  assert_true(cfg.num_pages > 0);
}

/* ---- kvp_config_validate ---------------------------------------------------------------------- */

static kvp_config row_a_config(void) {
  kvp_config_options o = spec_opts(32, 8, 128, KVP_DTYPE_BF16, 128, 8192, KVP_LAYOUT_V3, 0);
  kvp_config cfg;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  return cfg;
}

static void expect_validate_error(const kvp_config *c, kvp_status code, const char *substr) {
  kvp_config copy = *c;
  kvp_status s = kvp_config_validate(c);
  if (s != code)
    fail_msg("validate: expected %s ('%s'), got %s: %s", kvp_status_name(code), substr,
             kvp_status_name(s), kvp_last_error_message());
  if (strstr(kvp_last_error_message(), substr) == NULL)
    fail_msg("message '%s' lacks '%s'", kvp_last_error_message(), substr);
  assert_memory_equal(&copy, c, sizeof copy);
  /* every reader of a config runs the same check */
  kvp_layout_info li;
  memset(&li, FILL, sizeof li);
  li.struct_size = sizeof li;
  kvp_layout_info li_before = li;
  assert_int_equal(kvp_config_get_layout(c, &li), code);
  assert_memory_equal(&li, &li_before, sizeof li);
  kvp_plan p;
  memset(&p, FILL, sizeof p);
  p.struct_size = sizeof p;
  kvp_plan p_before = p;
  assert_int_equal(kvp_config_plan(c, &p), code);
  assert_memory_equal(&p, &p_before, sizeof p);
}

static void test_config__validate_accepts_created_and_hand_built(void **state) {
  (void)state;
  kvp_config cfg = row_a_config();
  assert_kvp_ok(kvp_config_validate(&cfg));
  assert_true(kvp_last_error_message()[0] == '\0');
  /* hand-built (e.g. from JSON) with the reference's numbers */
  kvp_config h;
  assert_kvp_ok(kvp_config_init(&h, sizeof h));
  h.num_hidden_layers = 32;
  h.max_model_length = 8192;
  h.num_kv_heads = 8;
  h.k_headdim = h.v_headdim = 128;
  h.num_pages = 3728;
  h.max_num_pages_per_req = 64;
  h.num_slices_per_kv_cache_update_page = 32;
  assert_kvp_ok(kvp_config_validate(&h));
  assert_memory_equal(&h, &cfg, sizeof h);
  /* derived fields still -1 ("not computed") */
  h.num_pages = -1;
  h.max_num_pages_per_req = -1;
  h.num_slices_per_kv_cache_update_page = -1;
  assert_kvp_ok(kvp_config_validate(&h));
}

static void test_config__validate_rejects_bad_records(void **state) {
  (void)state;
  kvp_config c;
  c = row_a_config(); c.num_hidden_layers = 0;   expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "num_hidden_layers");
  c = row_a_config(); c.num_kv_heads = -1;       expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "num_kv_heads");
  c = row_a_config(); c.max_model_length = 0;    expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "max_model_length");
  c = row_a_config(); c.k_headdim = 0; c.v_headdim = 0;
  expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "k_headdim");
  c = row_a_config(); c.v_headdim = 64;          expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "v_headdim");
  c = row_a_config(); c.page_size = 0;           expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "page_size");
  c = row_a_config(); c.hbm_utilization = 1.5;   expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "hbm_utilization");
  c = row_a_config(); c.max_num_pages_per_req = 63;
  expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "max_num_pages_per_req");
  c = row_a_config(); c.num_slices_per_kv_cache_update_page = 16;
  expect_validate_error(&c, KVP_ERR_INVALID_ARGUMENT, "num_slices_per_kv_cache_update_page");
  c = row_a_config(); c.kvdtype = 99u;           expect_validate_error(&c, KVP_ERR_NOT_FOUND, "99");
  c = row_a_config(); c.kvdtype = KVP_DTYPE_F64; expect_validate_error(&c, KVP_ERR_UNSUPPORTED, "fp64");
  c = row_a_config(); c.kvdtype = KVP_DTYPE_F8_E5M2FNUZ;
  expect_validate_error(&c, KVP_ERR_UNSUPPORTED, "fp8_e5m2fnuz");
  c = row_a_config(); c.version = 1u;            expect_validate_error(&c, KVP_ERR_NOT_FOUND, "version");
  c = row_a_config(); c.struct_size = 16;        expect_validate_error(&c, KVP_ERR_VERSION_MISMATCH, "struct_size");
  c = row_a_config(); c.abi_version = 0;         expect_validate_error(&c, KVP_ERR_VERSION_MISMATCH, "abi_version");
  assert_kvp_status(kvp_config_validate(NULL), KVP_ERR_INVALID_ARGUMENT, "");
}

static void test_config__plan_and_layout_argument_errors(void **state) {
  (void)state;
  kvp_config cfg = row_a_config();
  kvp_plan p, pb;
  memset(&p, FILL, sizeof p);
  p.struct_size = 0;
  pb = p;
  assert_kvp_status(kvp_config_plan(&cfg, &p), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_memory_equal(&p, &pb, sizeof p);
  /* num_pages not computed */
  cfg.num_pages = -1;
  p.struct_size = sizeof p;
  pb = p;
  assert_kvp_status(kvp_config_plan(&cfg, &p), KVP_ERR_INVALID_ARGUMENT, "num_pages");
  assert_memory_equal(&p, &pb, sizeof p);
  assert_kvp_status(kvp_config_plan(NULL, &p), KVP_ERR_INVALID_ARGUMENT, "");
  assert_kvp_status(kvp_config_plan(&cfg, NULL), KVP_ERR_INVALID_ARGUMENT, "");
  kvp_layout_info li, lb;
  memset(&li, FILL, sizeof li);
  li.struct_size = 4;
  lb = li;
  cfg = row_a_config();
  assert_kvp_status(kvp_config_get_layout(&cfg, &li), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_memory_equal(&li, &lb, sizeof li);
  assert_kvp_status(kvp_config_get_layout(NULL, &li), KVP_ERR_INVALID_ARGUMENT, "");
  assert_kvp_status(kvp_config_get_layout(&cfg, NULL), KVP_ERR_INVALID_ARGUMENT, "");
}

static void test_config__init_errors(void **state) {
  (void)state;
  kvp_config c, cb;
  memset(&c, FILL, sizeof c);
  cb = c;
  assert_kvp_status(kvp_config_init(&c, 8), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_memory_equal(&c, &cb, sizeof c);
  assert_kvp_status(kvp_config_init(NULL, sizeof c), KVP_ERR_INVALID_ARGUMENT, "");
  kvp_config_options o, ob;
  memset(&o, FILL, sizeof o);
  ob = o;
  assert_kvp_status(kvp_config_options_init(&o, 0), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_memory_equal(&o, &ob, sizeof o);
  assert_kvp_status(kvp_config_options_init(NULL, sizeof o), KVP_ERR_INVALID_ARGUMENT, "");
}

static int group_setup(void **state) {
  (void)state;
  init_spec_stats();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_config__host_memory_read_needs_no_allocation),
      cmocka_unit_test(test_config__spec_rows_a_to_i),
      cmocka_unit_test(test_config__extra_model_shapes),
      cmocka_unit_test(test_config__true_budget_gives_fewer_pages_for_padded_shapes),
      cmocka_unit_test(test_config__total_budget_mode),
      cmocka_unit_test(test_config__fallback_budget_when_no_device_reports),
      cmocka_unit_test(test_config__budget_knobs),
      cmocka_unit_test(test_config__head_dim_defaults),
      cmocka_unit_test(test_config__zeroed_options_get_defaults),
      cmocka_unit_test(test_config__config_init_defaults),
      cmocka_unit_test(test_config__padded_num_slices_argument_precedence),
      cmocka_unit_test(test_config__padded_num_slices_rejects_uncomputed_slices),
      cmocka_unit_test(test_config__max_num_seqs_table),
      cmocka_unit_test(test_config__create_rejects_bad_model_fields),
      cmocka_unit_test(test_config__create_rejects_bad_page_size_and_utilization),
      cmocka_unit_test(test_config__create_rejects_page_over_16mib),
      cmocka_unit_test(test_config__create_rejects_empty_pool),
      cmocka_unit_test(test_config__create_rejects_bad_dtype_layout_and_flags),
      cmocka_unit_test(test_config__create_rejects_bad_struct_versions),
      cmocka_unit_test(test_config__create_with_cpu_statistics),
      cmocka_unit_test(test_config__validate_accepts_created_and_hand_built),
      cmocka_unit_test(test_config__validate_rejects_bad_records),
      cmocka_unit_test(test_config__plan_and_layout_argument_errors),
      cmocka_unit_test(test_config__init_errors),
  };
  return cmocka_run_group_tests_name("config", tests, group_setup, NULL);
}
