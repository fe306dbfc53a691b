#include "core/attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/dtype.hpp"
#include "core/math.hpp"
#include "core/rows.hpp"
#include "core/shard.hpp"
#include "util/error.hpp"
#include "util/options.hpp"

namespace kvp::detail {

namespace {

// ---- options

void read_options(const kvp_attention_options* opts, const Layout& L, int64_t Hq, AttentionJob& j,
                  const char* fn) {
  kvp_attention_options o;
  std::memset(&o, 0, sizeof o);
  if (opts != nullptr)
    o = read_versioned(opts, sizeof(kvp_attention_options), KVP_ATTENTION_OPTIONS_VERSION, fn, "kvp_attention_options");
  auto positive = [fn](float v, const char* name) {
    if (!(std::isfinite(v) && v >= 0.0f))
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s is %g; it must be finite and positive (0 = default)", fn, name,
           static_cast<double>(v));
  };
  positive(o.softmax_scale, "softmax_scale");
  positive(o.k_scale, "k_scale");
  positive(o.v_scale, "v_scale");
  if (!std::isfinite(o.logits_soft_cap))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: logits_soft_cap is %g; it must be finite (0 = no cap)", fn,
         static_cast<double>(o.logits_soft_cap));
  if (o.sliding_window < 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: sliding_window is %d; it must be positive (0 = no window)", fn, o.sliding_window);
  if (o.num_sinks != 0 && static_cast<int64_t>(o.num_sinks) != Hq)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_sinks is %u but the queries have %lld heads (one sink per query head, or 0)",
         fn, o.num_sinks, ll(Hq));
  if (o.num_sinks != 0 && o.sinks == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: sinks is NULL but num_sinks is %u", fn, o.num_sinks);
  for (uint32_t h = 0; h < o.num_sinks; ++h)
    if (std::isnan(o.sinks[h]) || o.sinks[h] == std::numeric_limits<float>::infinity())
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: sinks[%u] is %g; a sink must be finite or -infinity", fn, h,
           static_cast<double>(o.sinks[h]));
  // The reference's default scale: 1.0 for v3 (ATTENTION.md §5.2), 1/sqrt(head_dim) for v2.
  const float sigma = o.softmax_scale != 0.0f ? o.softmax_scale
                      : L.v3                   ? 1.0f
                                               : static_cast<float>(1.0 / std::sqrt(static_cast<double>(L.head_dim)));
  j.logit_scale = sigma * (o.k_scale != 0.0f ? o.k_scale : 1.0f);
  j.v_scale = o.v_scale != 0.0f ? o.v_scale : 1.0f;
  j.soft_cap = std::fabs(o.logits_soft_cap);
  j.window = o.sliding_window;
  j.sinks = o.num_sinks != 0 ? o.sinks : nullptr;  // read during the call (CUDA: staged into the launch)
}

// ---- tensors

// [lo, hi) bytes a tensor touches (empty when it has no element).
struct Span {
  uintptr_t lo = 0, hi = 0;
};
Span span_of(const kvp_tensor& t, int64_t itemsize) {
  Span s;
  if (t.shape[0] == 0 || t.shape[1] == 0 || t.shape[2] == 0 || t.data == nullptr) return s;
  int64_t lo = 0, hi = 0;
  for (int d = 0; d < 3; ++d) {
    const int64_t ext = (t.shape[d] - 1) * t.strides[d];  // bounded by check_input
    (ext < 0 ? lo : hi) += ext;
  }
  const auto base = reinterpret_cast<intptr_t>(t.data);
  s.lo = static_cast<uintptr_t>(base + lo * itemsize);
  s.hi = static_cast<uintptr_t>(base + (hi + 1) * itemsize);
  return s;
}
bool overlap(Span a, Span b) { return a.lo < a.hi && b.lo < b.hi && a.lo < b.hi && b.lo < a.hi; }

void check_out_overlaps(const Cache& cache, const kvp_tensor& out, const kvp_tensor* others[3], const char* names[3],
                        const char* fn) {
  const Span o = span_of(out, dtype_size(out.dtype));
  for (int i = 0; i < 3; ++i)
    if (others[i] != nullptr && overlap(o, span_of(*others[i], dtype_size(others[i]->dtype))))
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: out overlaps %s; the output must have memory of its own", fn, names[i]);
  for (int64_t l = 0; l < cache.num_layers(); ++l) {
    Span pages;
    pages.lo = reinterpret_cast<uintptr_t>(cache.layer_data(l));
    pages.hi = pages.lo + cache.layer_bytes();
    if (overlap(o, pages)) fail(KVP_ERR_INVALID_ARGUMENT, "%s: out overlaps the pages of layer %lld", fn, ll(l));
  }
}

// Validates queries, out, options and metadata (and, when `write` is given, that no slot it writes
// is read by any row as cached context) and fills the job; the metadata's checks come from the
// read plan `plan` (kept by the metadata or built here). Nothing is written.
void prepare_attention(const Cache& cache, int64_t layer, const kvp_tensor& queries, const kvp_tensor& out,
                       const Metadata& md, const kvp_attention_options* opts, const PreparedConcat* write,
                       AttentionJob& j, PlanRef& plan, const char* fn) {
  cache.check_healthy(fn);
  cache.check_layer(layer, fn);
  // A KV-head shard attends with the query heads of its own KV heads: to the kernels it is a cache
  // of those heads (its rows hold them in order, whole, then padding).
  Layout L = cache.layout();
  if (L.shard && L.num_pages != L.global_pages)
    fail(KVP_ERR_UNSUPPORTED, "%s: attention on a data-parallel shard is not supported yet", fn);
  if (L.heads_cut() && !L.h64 && (L.slot_begin % 2 != 0 || L.data_entries() % 2 != 0))
    fail(KVP_ERR_UNSUPPORTED, "%s: this shard holds only the keys or only the values of a KV head at an end of its "
         "range (whole-layout entries [%lld, %lld)); attention needs whole heads", fn, ll(L.slot_begin),
         ll(L.slot_begin + L.combined_heads));
  const HeadRange own = tensor_heads(L);
  L.num_kv_heads = own.end - own.begin;
  L.slot_begin = 0;
  const char* whose = L.shard ? "this shard's" : "the cache's";
  j = AttentionJob{};
  j.q = check_input(cache, queries, "queries", queries.shape[1], "(the query heads)", fn);
  const int64_t Hq = queries.shape[1];
  if (Hq < 1 || Hq % L.num_kv_heads != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: queries have %lld heads; they must be a positive multiple of %s %lld KV "
         "heads", fn, ll(Hq), whose, ll(L.num_kv_heads));
  j.out = check_input(cache, out, "out", Hq, "the queries have", fn);
  if (out.shape[0] != queries.shape[0])
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: out has %lld tokens but queries have %lld", fn, ll(out.shape[0]),
         ll(queries.shape[0]));
  if (L.head_dim > kMaxAttentionHeadDim)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: head_dim %lld is above the %lld that attention supports", fn, ll(L.head_dim),
         ll(kMaxAttentionHeadDim));
  j.pages = cache.layer_data(layer);
  j.layout = L;
  j.num_tokens = queries.shape[0];
  j.num_q_heads = Hq;
  read_options(opts, L, Hq, j, fn);

  const MetadataArrays& m = md.arrays();
  j.md = m;
  check_metadata_layout(m, L, fn);
  j.num_rows = -1;
  if (m.device_type != KVP_DEVICE_CPU) {
    if (m.device_type != cache.device_type() || m.device_id != cache.device_id())
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: metadata lives on device type %d id %d but the cache on device type %d id %d",
           fn, m.device_type, m.device_id, cache.device_type(), cache.device_id());
    check_device_arrays(m, L.v3, false, fn);
    j.metadata_on_device = 1;
    return;
  }
  plan = plan_for(cache, md, write != nullptr ? PlanKind::kFusedRead : PlanKind::kRead, j.num_tokens,
                  write != nullptr ? &*write->plan : nullptr, fn);
  j.num_rows = plan->num_rows;
  j.host_validated = 1;
}

}  // namespace

void attention(Cache& cache, int64_t layer, const kvp_tensor& queries, const kvp_tensor* keys, const kvp_tensor* values,
               const Metadata& md, const kvp_attention_options* opts, const kvp_tensor& out, kvp_stream stream,
               const char* fn) {
  if ((keys == nullptr) != (values == nullptr))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: keys and values must both be given (fused write) or both be NULL (read only)", fn);
  PreparedConcat write;
  if (keys != nullptr) {
    prepare_concat(cache, layer, *keys, *values, md, write, fn);
    if (keys->shape[0] != queries.shape[0])
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: keys have %lld tokens but queries have %lld", fn, ll(keys->shape[0]),
           ll(queries.shape[0]));
  }
  AttentionJob job;
  PlanRef read;
  prepare_attention(cache, layer, queries, out, md, opts, keys != nullptr ? &write : nullptr, job, read, fn);
  const kvp_tensor* inputs[3] = {&queries, keys, values};
  const char* names[3] = {"queries", "keys", "values"};
  check_out_overlaps(cache, out, inputs, names, fn);
  cache.backend().attend(job, keys != nullptr ? &write.job : nullptr, stream);
  if (keys != nullptr) write.plan.publish(md);
  read.publish(md);
}

}  // namespace kvp::detail
