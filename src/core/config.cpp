// Config validation, derived geometry, budgeting and creation (SPEC.md §1, §2, §7.1).
#include "core/config.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>

#include "backend/backend.hpp"
#include "core/dtype.hpp"
#include "core/math.hpp"
#include "util/error.hpp"
#include "util/options.hpp"

namespace kvp::detail {
namespace {
constexpr int64_t kSixteenMiB = 16 * 1024 * 1024;
constexpr int64_t kSlicesCap = 64;

}  // namespace

namespace {

// The reference's page_size_bytes of positive dimensions; false when it overflows int64.
bool try_page_size_bytes(int64_t page_size, int64_t num_kv_heads, int64_t head_size, kvp_dtype dtype, int64_t* out) {
  const int64_t packing = dtype_packing(dtype);
  int64_t two_h = 0, combined = 0, padded_head = 0, bytes = 0;
  if (__builtin_mul_overflow(num_kv_heads, 2, &two_h) || __builtin_add_overflow(two_h, packing - 1, &combined) ||
      __builtin_add_overflow(head_size, 127, &padded_head))
    return false;
  combined = combined / packing * packing;
  padded_head = padded_head / 128 * 128;
  if (__builtin_mul_overflow(page_size, combined, &bytes) || __builtin_mul_overflow(bytes, padded_head, &bytes) ||
      __builtin_mul_overflow(bytes, static_cast<int64_t>(dtype_bits(dtype)), &bytes))
    return false;
  *out = bytes / 8;
  return true;
}

// `v` in [lo, hi], else INVALID_ARGUMENT naming the field.
void check_range(int64_t v, int64_t lo, int64_t hi, const char* field, const char* fn) {
  if (v < lo || v > hi)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s must be in [%lld, %lld], got %lld", fn, field, ll(lo), ll(hi), ll(v));
}

// floor(bytes * util) for bytes >= 0 and util in (0, 1]: at most 2^63, exact in 128 bits.
__int128 scaled_floor(int64_t bytes, double util) {
  return static_cast<__int128>(std::floor(static_cast<double>(bytes) * util));
}

// max(0, min(v, INT64_MAX)).
int64_t clamp_to_int64(__int128 v) {
  if (v < 0) return 0;
  return v > INT64_MAX ? INT64_MAX : static_cast<int64_t>(v);
}

// -1 (unset / not computed) or in [1, hi].
void check_optional(int64_t v, int64_t hi, const char* field, const char* fn) {
  if (v != -1 && (v < 1 || v > hi))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s must be -1 or in [1, %lld], got %lld", fn, field, ll(hi), ll(v));
}

}  // namespace

int64_t page_size_bytes(int64_t page_size, int64_t num_kv_heads, int64_t head_size, kvp_dtype dtype) {
  if (page_size <= 0) fail(KVP_ERR_INVALID_ARGUMENT, "page_size must be positive, got %lld", ll(page_size));
  if (num_kv_heads <= 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "num_kv_heads must be positive, got %lld", ll(num_kv_heads));
  if (head_size <= 0) fail(KVP_ERR_INVALID_ARGUMENT, "head_size must be positive, got %lld", ll(head_size));
  int64_t bytes = 0;
  if (!try_page_size_bytes(page_size, num_kv_heads, head_size, dtype, &bytes))
    fail(KVP_ERR_INVALID_ARGUMENT, "page size in bytes overflows int64 (page_size %lld, num_kv_heads %lld, head_size %lld)",
         ll(page_size), ll(num_kv_heads), ll(head_size));
  return bytes;
}

int64_t num_slices_per_update_page(int64_t page_size_bytes_v) {
  if (page_size_bytes_v <= 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "page_size_bytes must be positive, got %lld", ll(page_size_bytes_v));
  const int64_t n = kSixteenMiB / page_size_bytes_v;
  if (n <= 0)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "Number of slices should be positive: a page of one layer is %lld bytes, more than the 16 MiB "
         "(16777216 bytes) update staging buffer",
         ll(page_size_bytes_v));
  const int64_t p = previous_power_of_2(n);
  return p < kSlicesCap ? p : kSlicesCap;
}

int64_t max_num_seqs(const kvp_config& cfg) {
  const int64_t pages_per_req = cdiv(cfg.max_model_length, cfg.page_size);
  if (pages_per_req <= 0) return 0;
  return ((1048576 / 2) / pages_per_req) / 4;
}

kvp_config read_config(const kvp_config* cfg, const char* function) {
  if (cfg == nullptr) fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'cfg' must not be NULL", function);
  kvp_config c = read_versioned(cfg, kConfigV1Size, KVP_CONFIG_VERSION, function, "kvp_config");
  spell_out_sharding(c);
  return c;
}

bool config_wants_v2(const kvp_config* out) {
  return out->struct_size == sizeof(kvp_config) && out->abi_version == KVP_CONFIG_VERSION;
}

void set_config_version(kvp_config& c, bool v2) {
  c.struct_size = static_cast<uint32_t>(v2 ? sizeof(kvp_config) : kConfigV1Size);
  c.abi_version = v2 ? KVP_CONFIG_VERSION : 1u;
}

void write_config(kvp_config* out, kvp_config c, bool v2) {
  set_config_version(c, v2);
  write_grown(out, c, v2, kConfigV1Size);
}

void spell_out_sharding(kvp_config& c) {
  if (c.data_parallel_size == 0) c.data_parallel_size = 1;
  if (c.kv_head_shards == 0) c.kv_head_shards = 1;
}

Sharding sharding_of(const kvp_config& c) {
  Sharding s;
  s.dp = c.data_parallel_size == 0 ? 1 : c.data_parallel_size;
  s.shards = c.kv_head_shards == 0 ? 1 : c.kv_head_shards;
  s.requested_shards = c.requested_kv_head_shards == 0 ? s.shards : c.requested_kv_head_shards;
  s.requested_dtype = c.requested_kvdtype == KVP_DTYPE_INVALID ? c.kvdtype : c.requested_kvdtype;
  return s;
}

int64_t head_split_units(kvp_layout version, int64_t H, int64_t D, kvp_dtype dtype) {
  if (version == KVP_LAYOUT_V2) return 2 * H;
  const int64_t pack = dtype_packing(dtype);
  return (D == 64 ? align_to_multiple(H, pack) : align_to_multiple(2 * H, pack)) / pack;
}

HeadSharding resolve_head_sharding(kvp_layout version, int64_t H, int64_t D, kvp_dtype dtype, int64_t S) {
  if (S <= 1) return {1, dtype, KVP_HEAD_SHARDING_NONE};
  if (head_split_units(version, H, D, dtype) % S == 0) return {S, dtype, KVP_HEAD_SHARDING_KEEP};
  if (version == KVP_LAYOUT_V3)
    for (kvp_dtype up : {KVP_DTYPE_BF16, KVP_DTYPE_F32})
      if (up != dtype && head_split_units(version, H, D, up) % S == 0) return {S, up, KVP_HEAD_SHARDING_UPCAST};
  return {1, dtype, KVP_HEAD_SHARDING_REPLICATE};
}

namespace {

// The sharding fields: in range, the resolution of what was asked for, whole pages per DP shard.
void check_sharding(const kvp_config& c, const char* fn) {
  const Sharding s = sharding_of(c);
  check_range(s.dp, 1, kMaxShards, "data_parallel_size", fn);
  check_range(s.shards, 1, kMaxShards, "kv_head_shards", fn);
  check_range(s.requested_shards, 1, kMaxShards, "requested_kv_head_shards", fn);
  if (c._reserved1 != 0) fail(KVP_ERR_UNSUPPORTED, "%s: kvp_config._reserved1 must be 0", fn);
  if (c.requested_kvdtype != KVP_DTYPE_INVALID) require_storage_dtype(c.requested_kvdtype, fn);
  const HeadSharding r = resolve_head_sharding(c.version, c.num_kv_heads, c.k_headdim, s.requested_dtype,
                                               s.requested_shards);
  if (r.shards != s.shards || r.dtype != c.kvdtype)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: kv_head_shards %lld with kvdtype %s is not what %lld requested shards of %s resolve to "
         "(%lld shards of %s: %lld %s)",
         fn, ll(s.shards), dtype_name(c.kvdtype), ll(s.requested_shards), dtype_name(s.requested_dtype), ll(r.shards),
         dtype_name(r.dtype), ll(head_split_units(c.version, c.num_kv_heads, c.k_headdim, s.requested_dtype)),
         c.version == KVP_LAYOUT_V2 ? "combined heads" : "storage groups");
  if (c.num_pages != -1 && c.num_pages % s.dp != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_pages %lld is not a multiple of data_parallel_size %lld", fn,
         ll(c.num_pages), ll(s.dp));
}

// Every field on its own and the page of one layer (SPEC.md §2.1; bounds in config.h).
void check_fields(const kvp_config& c, const char* fn) {
  if (c.version != KVP_LAYOUT_V2 && c.version != KVP_LAYOUT_V3)
    fail(KVP_ERR_NOT_FOUND, "%s: unknown layout version %u (expected v2 or v3)", fn,
         static_cast<unsigned>(c.version));
  require_storage_dtype(c.kvdtype, fn);
  check_range(c.num_hidden_layers, 1, kMaxLayers, "num_hidden_layers", fn);
  check_range(c.max_model_length, 1, kMaxModelLength, "max_model_length", fn);
  check_range(c.num_kv_heads, 1, kMaxPageDim, "num_kv_heads", fn);
  check_range(c.k_headdim, 1, kMaxPageDim, "k_headdim", fn);
  if (c.v_headdim != c.k_headdim)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: v_headdim (%lld) must equal k_headdim (%lld): the layouts store values with the key head dim",
         fn, ll(c.v_headdim), ll(c.k_headdim));
  check_range(c.page_size, 1, kMaxPageDim, "page_size", fn);
  const int64_t packing = dtype_packing(c.kvdtype);
  if (c.page_size % packing != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: page_size %lld must be a multiple of the packing %lld of %s", fn,
         ll(c.page_size), ll(packing), dtype_name(c.kvdtype));
  if (!(c.hbm_utilization > 0.0 && c.hbm_utilization <= 1.0))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: hbm_utilization must be in (0, 1], got %g", fn, c.hbm_utilization);
  check_optional(c.num_pages, kMaxNumPages, "num_pages", fn);
  const int64_t ppr = cdiv(c.max_model_length, c.page_size);
  if (c.max_num_pages_per_req != -1 && c.max_num_pages_per_req != ppr)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: max_num_pages_per_req is %lld but cdiv(max_model_length %lld, page_size %lld) = %lld", fn,
         ll(c.max_num_pages_per_req), ll(c.max_model_length), ll(c.page_size), ll(ppr));
  int64_t psb = 0;
  if (!try_page_size_bytes(c.page_size, c.num_kv_heads, c.k_headdim, c.kvdtype, &psb) || psb > kSixteenMiB)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: Number of slices should be positive: a page of one layer (page_size %lld x num_kv_heads %lld x "
         "k_headdim %lld of %s) is more than the 16 MiB (16777216 bytes) update staging buffer",
         fn, ll(c.page_size), ll(c.num_kv_heads), ll(c.k_headdim), dtype_name(c.kvdtype));
  const int64_t slices = num_slices_per_update_page(psb);
  if (c.num_slices_per_kv_cache_update_page != -1 && c.num_slices_per_kv_cache_update_page != slices)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_slices_per_kv_cache_update_page is %lld but the formula gives %lld",
         fn, ll(c.num_slices_per_kv_cache_update_page), ll(slices));
  check_optional(c.max_num_tokens, kMaxNumTokens, "max_num_tokens", fn);
  check_optional(c.max_num_reqs, kMaxNumReqs, "max_num_reqs", fn);
  check_sharding(c, fn);
}

}  // namespace

void validate_config(const kvp_config& c, const char* fn) { (void)layout_of(c, fn); }

Layout layout_of(const kvp_config& c, const char* fn) {
  check_fields(c, fn);
  Layout L;
  L.v3 = c.version == KVP_LAYOUT_V3;
  L.dtype = c.kvdtype;
  L.itemsize = dtype_size(c.kvdtype);
  L.num_layers = c.num_hidden_layers;
  L.num_pages = c.num_pages > 0 ? c.num_pages : 0;
  L.page_size = c.page_size;
  L.num_kv_heads = c.num_kv_heads;
  L.head_dim = c.k_headdim;
  L.packing = dtype_packing(c.kvdtype);
  const int64_t two_h = checked_mul(2, c.num_kv_heads, "2 * num_kv_heads");
  if (L.v3) {
    L.h64 = c.k_headdim == 64;
    L.combined_heads = L.h64 ? align_to_multiple(c.num_kv_heads, L.packing) : align_to_multiple(two_h, L.packing);
    L.groups = L.combined_heads / L.packing;
    L.storage_head_dim = L.h64 ? 128 : align_to_multiple(c.k_headdim, 128);
    L.ndim = 5;
    L.shape[0] = L.num_pages;
    L.shape[1] = L.page_size;
    L.shape[2] = L.groups;
    L.shape[3] = L.packing;
    L.shape[4] = L.storage_head_dim;
  } else {
    L.h64 = false;
    L.combined_heads = two_h;
    L.groups = two_h;
    L.storage_head_dim = c.k_headdim;
    L.ndim = 4;
    L.shape[0] = L.num_pages;
    L.shape[1] = L.page_size;
    L.shape[2] = two_h;
    L.shape[3] = c.k_headdim;
  }
  // A page of one layer is at most 16 MiB (check_fields) and num_pages < 2^31, so only the whole
  // cache can exceed int64: its bytes must be addressable.
  L.token_elems = checked_mul(L.combined_heads, L.storage_head_dim, "elements per token");
  L.page_elems = checked_mul(L.page_size, L.token_elems, "elements per page");
  L.layer_elems = checked_mul(L.num_pages, L.page_elems, "elements per layer");
  L.layer_bytes = checked_mul(L.layer_elems, L.itemsize, "bytes per layer");
  L.page_bytes_per_layer = checked_mul(L.page_elems, L.itemsize, "bytes per page");
  L.max_num_seqs = max_num_seqs(c);
  L.global_pages = L.num_pages;
  L.data_parallel_size = sharding_of(c).dp;
  (void)checked_mul(L.layer_bytes, L.num_layers, "bytes of the cache (num_pages x page bytes x num_hidden_layers)");
  return L;
}

Layout layout_with_pages(const kvp_config& c, const char* fn) {
  Layout L = layout_of(c, fn);
  if (c.num_pages < 1)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_pages is %lld; create the config with kvp_config_create first", fn,
         ll(c.num_pages));
  return L;
}

kvp_layout_info layout_info_of(const Layout& L) {
  kvp_layout_info li;
  std::memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  li.is_h64 = L.h64 ? 1u : 0u;
  li.kv_head_packing = L.packing;
  li.storage_num_combined_kv_heads = L.combined_heads;
  li.storage_num_kv_groups = L.groups;
  li.storage_head_dim = L.storage_head_dim;
  li.itemsize = L.itemsize;
  li.ndim = L.ndim;
  for (int i = 0; i < 5; ++i) li.shape[i] = i < L.ndim ? L.shape[i] : 0;
  li.layer_bytes = L.layer_bytes;
  li.page_bytes_per_layer = L.page_bytes_per_layer;
  li.max_num_seqs = L.max_num_seqs;
  return li;
}

int64_t hbm_budget_bytes(const kvp_memory_stats* stats, uint32_t n, double util, uint32_t mode, int64_t margin) {
  if (n > 0 && stats == nullptr) fail(KVP_ERR_INVALID_ARGUMENT, "memory_stats must not be NULL when num_memory_stats is %u", n);
  if (!(util > 0.0 && util <= 1.0)) fail(KVP_ERR_INVALID_ARGUMENT, "utilization must be in (0, 1], got %g", util);
  if (mode != KVP_BUDGET_FREE && mode != KVP_BUDGET_TOTAL)
    fail(KVP_ERR_INVALID_ARGUMENT, "unknown budget mode %u (expected KVP_BUDGET_FREE or KVP_BUDGET_TOTAL)", mode);
  if (margin < 0) fail(KVP_ERR_INVALID_ARGUMENT, "safety margin must not be negative, got %lld", ll(margin));
  bool any = false;
  int64_t best = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const kvp_memory_stats& s = stats[i];
    if (!s.valid) continue;
    if (s.bytes_limit < 0 || s.bytes_reservable_limit < 0 || s.bytes_total < 0 || s.bytes_in_use < 0 ||
        s.bytes_reserved < 0)
      fail(KVP_ERR_INVALID_ARGUMENT, "memory stats of device %u contain a negative byte count", i);
    const int64_t limit = s.bytes_limit ? s.bytes_limit : (s.bytes_reservable_limit ? s.bytes_reservable_limit : s.bytes_total);
    if (limit == 0) continue;
    const int64_t used = s.bytes_in_use > s.bytes_reserved ? s.bytes_in_use : s.bytes_reserved;
    const int64_t free_b = limit > used ? limit - used : 0;
    // Python: int(x * util) multiplies in double precision and truncates. The product can round
    // up to 2^63 (limit near INT64_MAX), so the floor and the subtractions are done in 128 bits
    // and only the final, clamped result is narrowed.
    const __int128 usable = mode == KVP_BUDGET_FREE ? scaled_floor(free_b, util) - margin
                                                    : scaled_floor(limit, util) - used - margin;
    const int64_t clamped = clamp_to_int64(usable);
    if (!any || clamped < best) best = clamped;
    any = true;
  }
  return any ? best : static_cast<int64_t>(KVP_FALLBACK_BUDGET);
}

kvp_config create_config(const kvp_config_options& o, const char* fn) {
  constexpr uint32_t kKnownFlags = KVP_CONFIG_FLAG_REFERENCE_BUDGET | KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  if (o.flags & ~kKnownFlags) fail(KVP_ERR_UNSUPPORTED, "%s: unknown flags 0x%x", fn, o.flags & ~kKnownFlags);
  if (o._reserved0 != 0) fail(KVP_ERR_UNSUPPORTED, "%s: kvp_config_options._reserved0 must be 0", fn);

  // Head dims: kv_head_dim_size (the reference's budgeting dim) defaults k/v and vice versa.
  int64_t kvd = o.kv_head_dim_size, k = o.k_headdim, v = o.v_headdim;
  if (kvd < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: kv_head_dim_size must be positive, got %lld", fn, ll(kvd));
  if (kvd == 0) kvd = k;
  if (kvd <= 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: kv_head_dim_size must be positive (neither kv_head_dim_size nor k_headdim given)", fn);
  if (k == 0) k = kvd;
  if (v == 0) v = kvd;
  if (o.num_hidden_layers <= 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_hidden_layers must be positive, got %lld", fn, ll(o.num_hidden_layers));
  if (o.num_kv_heads <= 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_kv_heads must be positive, got %lld", fn, ll(o.num_kv_heads));
  if (o.page_size < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: page_size must be positive, got %lld", fn, ll(o.page_size));
  if (o.hbm_utilization < 0.0 || std::isnan(o.hbm_utilization))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: hbm_utilization must be in (0, 1], got %g", fn, o.hbm_utilization);
  if (o.budget_mode != KVP_BUDGET_FREE && o.budget_mode != KVP_BUDGET_TOTAL)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: unknown budget_mode %u", fn, o.budget_mode);
  if (o.budget_bytes < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: budget_bytes must not be negative, got %lld", fn, ll(o.budget_bytes));
  if (o.safety_margin_bytes < 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: safety_margin_bytes must not be negative, got %lld (use KVP_CONFIG_FLAG_NO_SAFETY_MARGIN)",
         fn, ll(o.safety_margin_bytes));
  if (o.kv_head_shards < 0 || o.kv_head_shards > kMaxShards)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: kv_head_shards must be positive and at most %lld, got %lld", fn, ll(kMaxShards),
         ll(o.kv_head_shards));
  if (o.data_parallel_size < 0 || o.data_parallel_size > kMaxShards)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: data_parallel_size must be positive and at most %lld, got %lld", fn,
         ll(kMaxShards), ll(o.data_parallel_size));
  if (o.max_num_tokens < 0 || o.max_num_reqs < 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: max_num_tokens and max_num_reqs must not be negative", fn);

  kvp_config c;
  std::memset(&c, 0, sizeof c);
  c.struct_size = sizeof(kvp_config);
  c.abi_version = KVP_CONFIG_VERSION;
  c.num_hidden_layers = o.num_hidden_layers;
  c.max_model_length = o.max_model_length;
  c.num_kv_heads = o.num_kv_heads;
  c.k_headdim = k;
  c.v_headdim = v;
  c.hbm_utilization = o.hbm_utilization == 0.0 ? 0.9 : o.hbm_utilization;
  c.page_size = o.page_size == 0 ? 128 : o.page_size;
  c.num_pages = -1;
  c.max_num_pages_per_req = -1;
  c.num_slices_per_kv_cache_update_page = -1;
  c.max_num_tokens = o.max_num_tokens == 0 ? -1 : o.max_num_tokens;
  c.max_num_reqs = o.max_num_reqs == 0 ? -1 : o.max_num_reqs;
  c.version = o.version == KVP_LAYOUT_DEFAULT ? KVP_LAYOUT_V3 : o.version;
  c.kvdtype = o.kvdtype == KVP_DTYPE_INVALID ? KVP_DTYPE_BF16 : o.kvdtype;
  validate_config(c, fn);  // shape, dtype, version, page/packing, utilization, slices (> 16 MiB page)

  // KV-head resolution (SPEC.md §7.3), then the record again: an upcast page may not fit 16 MiB.
  const int64_t S = o.kv_head_shards == 0 ? 1 : o.kv_head_shards;
  const HeadSharding hs = resolve_head_sharding(c.version, c.num_kv_heads, c.k_headdim, c.kvdtype, S);
  if (hs.dtype != c.kvdtype) c.requested_kvdtype = c.kvdtype;
  if (hs.shards != S) c.requested_kv_head_shards = S;
  c.kvdtype = hs.dtype;
  c.kv_head_shards = hs.shards;
  c.data_parallel_size = o.data_parallel_size == 0 ? 1 : o.data_parallel_size;
  if (hs.kind == KVP_HEAD_SHARDING_UPCAST) validate_config(c, fn);

  c.max_num_pages_per_req = cdiv(c.max_model_length, c.page_size);
  c.num_slices_per_kv_cache_update_page =
      num_slices_per_update_page(page_size_bytes(c.page_size, c.num_kv_heads, c.k_headdim, c.kvdtype));

  // Budget per device.
  int64_t budget;
  const int64_t margin = (o.flags & KVP_CONFIG_FLAG_NO_SAFETY_MARGIN) ? 0
                         : o.safety_margin_bytes == 0             ? static_cast<int64_t>(KVP_DEFAULT_SAFETY_MARGIN)
                                                                  : o.safety_margin_bytes;
  if (o.budget_bytes > 0) {
    budget = o.budget_bytes;
  } else if (o.memory_stats != nullptr || o.num_memory_stats > 0) {
    budget = hbm_budget_bytes(o.memory_stats, o.num_memory_stats, c.hbm_utilization, o.budget_mode, margin);
  } else {
    kvp_memory_stats s;
    device_memory_stats(o.device_type == 0 ? KVP_DEVICE_CPU : o.device_type, o.device_id, &s);
    budget = hbm_budget_bytes(&s, 1, c.hbm_utilization, o.budget_mode, margin);
  }
  const int64_t total = checked_mul(checked_mul(budget, c.kv_head_shards, "budget * kv_head_shards"),
                                    c.data_parallel_size, "budget * kv_head_shards * data_parallel_size");

  int64_t page_bytes;
  if (o.flags & KVP_CONFIG_FLAG_REFERENCE_BUDGET) {
    page_bytes = checked_mul(2, c.num_hidden_layers, "page bytes");
    page_bytes = checked_mul(page_bytes, c.page_size, "page bytes");
    page_bytes = checked_mul(page_bytes, c.num_kv_heads, "page bytes");
    page_bytes = checked_mul(page_bytes, kvd, "page bytes");
    page_bytes = checked_mul(page_bytes, static_cast<int64_t>(dtype_size(c.kvdtype)), "page bytes");
  } else {
    const Layout L = layout_of(c, fn);
    page_bytes = checked_mul(L.page_bytes_per_layer, c.num_hidden_layers, "page bytes");
  }
  const int64_t pages = total / page_bytes;
  if (pages <= 0)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: the memory budget of %lld bytes is too small for one page of %lld bytes (all %lld layers); "
         "num_pages would be %lld",
         fn, ll(total), ll(page_bytes), ll(c.num_hidden_layers), ll(pages));
  if (pages < c.data_parallel_size)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: the memory budget gives %lld pages of %lld bytes, fewer than data_parallel_size %lld: every "
         "data-parallel shard needs at least one page (num_pages would be 0)",
         fn, ll(pages), ll(page_bytes), ll(c.data_parallel_size));
  c.num_pages = pages / c.data_parallel_size * c.data_parallel_size;
  return c;
}

namespace {

// The resolution of a plan in words (kvp_plan::sharding_message).
void sharding_message(const kvp_config& c, const kvp_plan& p, char* buf, size_t cap) {
  const bool v2 = c.version == KVP_LAYOUT_V2;
  const char* unit = v2 ? "combined heads" : "storage groups";
  const int64_t S = p.requested_kv_head_shards;
  const char* asked = dtype_name(p.requested_kvdtype);
  const int64_t asked_units = head_split_units(c.version, c.num_kv_heads, c.k_headdim, p.requested_kvdtype);
  int n = 0;
  switch (p.head_sharding) {
    case KVP_HEAD_SHARDING_NONE:
      n = std::snprintf(buf, cap, "KV heads not sharded: every device holds all %lld %s of %s", ll(asked_units), unit,
                        asked);
      break;
    case KVP_HEAD_SHARDING_KEEP:
      n = std::snprintf(buf, cap, "keep %s: %lld %s split over %lld devices (%lld per device)", asked, ll(asked_units),
                        unit, ll(S), ll(p.units_per_device));
      break;
    case KVP_HEAD_SHARDING_UPCAST:
      n = std::snprintf(buf, cap, "upcast %s \u2192 %s because %lld %s do not split over %lld devices (%s has %lld: %lld per device)",
                        asked, dtype_name(p.kvdtype), ll(asked_units), unit, ll(S), dtype_name(p.kvdtype),
                        ll(p.units_per_device * S), ll(p.units_per_device));
      break;
    default: {
      // The dtypes the v3 resolution tried besides the requested one.
      const char* tried = p.requested_kvdtype == KVP_DTYPE_BF16  ? ", nor do those of fp32"
                          : p.requested_kvdtype == KVP_DTYPE_F32 ? ", nor do those of bf16"
                                                                 : ", nor do those of bf16 or fp32";
      n = std::snprintf(buf, cap, "replicate: %lld %s of %s do not split over %lld devices%s, so every device holds all heads",
                        ll(asked_units), unit, asked, ll(S), v2 ? " (v2 keeps its dtype)" : tried);
      break;
    }
  }
  if (p.data_parallel_size > 1 && n > 0 && static_cast<size_t>(n) < cap)
    std::snprintf(buf + n, cap - static_cast<size_t>(n), "; pages split over %lld data-parallel shards of %lld",
                  ll(p.data_parallel_size), ll(p.pages_per_device));
}

}  // namespace

kvp_plan plan_of(const kvp_config& c, const char* fn) {
  const Layout L = layout_of(c, fn);
  if (c.num_pages < 1) fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_pages is not computed (-1); create the config first", fn);
  kvp_plan p;
  std::memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  p.num_pages = c.num_pages;
  p.usable_pages = c.num_pages - 1;
  p.page_size = c.page_size;
  p.bytes_per_page = checked_mul(L.page_bytes_per_layer, c.num_hidden_layers, "bytes per page");
  int64_t ref = checked_mul(checked_mul(2, c.num_hidden_layers, "reference page bytes"), c.page_size, "reference page bytes");
  ref = checked_mul(ref, c.num_kv_heads, "reference page bytes");
  ref = checked_mul(ref, c.k_headdim, "reference page bytes");
  p.reference_bytes_per_page = checked_mul(ref, L.itemsize, "reference page bytes");
  p.bytes_per_token = p.bytes_per_page / c.page_size;
  p.total_bytes = checked_mul(p.bytes_per_page, c.num_pages, "total bytes");
  p.token_capacity = checked_mul(p.usable_pages, c.page_size, "token capacity");
  p.max_concurrent_seqs = p.usable_pages / cdiv(c.max_model_length, c.page_size);
  p.max_num_seqs = L.max_num_seqs;
  const Sharding s = sharding_of(c);
  p.data_parallel_size = s.dp;
  p.kv_head_shards = s.shards;
  p.requested_kv_head_shards = s.requested_shards;
  p.head_sharding =
      resolve_head_sharding(c.version, c.num_kv_heads, c.k_headdim, s.requested_dtype, s.requested_shards).kind;
  p.requested_kvdtype = s.requested_dtype;
  p.kvdtype = c.kvdtype;
  p.units_per_device = head_split_units(c.version, c.num_kv_heads, c.k_headdim, c.kvdtype) / s.shards;
  p.pages_per_device = c.num_pages / s.dp;
  p.bytes_per_device = p.total_bytes / s.shards / s.dp;
  sharding_message(c, p, p.sharding_message, sizeof p.sharding_message);
  return p;
}

int64_t padded_num_slices(const kvp_config& c, int64_t num_tokens, int64_t max_reqs, const char* fn) {
  validate_config(c, fn);
  if (c.num_slices_per_kv_cache_update_page <= 0)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: num_slices_per_kv_cache_update_page is %lld (not computed); create the config first", fn,
         ll(c.num_slices_per_kv_cache_update_page));
  const int64_t T = num_tokens > 0 ? num_tokens : (c.max_num_tokens > 0 ? c.max_num_tokens : c.max_model_length);
  const int64_t R = max_reqs > 0 ? max_reqs : (c.max_num_reqs > 0 ? c.max_num_reqs : max_num_seqs(c));
  int64_t n = checked_add(checked_mul(2, R, "2 * max_num_reqs"), T / c.page_size, "padded slices");
  if (T < n) n = T;
  return align_to_multiple(n, c.num_slices_per_kv_cache_update_page);
}

}  // namespace kvp::detail
