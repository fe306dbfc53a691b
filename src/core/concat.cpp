#include "core/concat.hpp"

#include <cstring>
#include <limits>

#include "core/dtype.hpp"
#include "core/math.hpp"
#include "core/rows.hpp"
#include "core/shard.hpp"
#include "util/error.hpp"

namespace kvp::detail {

TensorArg check_input(const Cache& cache, const kvp_tensor& t, const char* name, int64_t heads, const char* heads_what,
                      const char* fn) {
  const Layout& L = cache.layout();
  if (t.ndim != 3)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s must have rank 3 [tokens, heads, head_dim], got rank %d", fn, name, t.ndim);
  if (!dtype_is_input(t.dtype))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s dtype %u (%s) is not an input dtype (f32, f16 or bf16)", fn, name,
         static_cast<unsigned>(t.dtype), dtype_name(t.dtype) ? dtype_name(t.dtype) : "unknown");
  if (t.shape[0] < 0 || t.shape[0] > std::numeric_limits<int32_t>::max())
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s has %lld tokens (must be in [0, 2^31))", fn, name, ll(t.shape[0]));
  if (t.shape[1] != heads)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s has %lld heads but %s %lld", fn, name, ll(t.shape[1]), heads_what, ll(heads));
  if (t.shape[2] != L.head_dim)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s has head_dim %lld but the cache has k_headdim %lld", fn, name,
         ll(t.shape[2]), ll(L.head_dim));
  const kvp_device_type dev = t.device_type == 0 ? KVP_DEVICE_CPU : t.device_type;
  if (dev != cache.device_type() || (dev != KVP_DEVICE_CPU && t.device_id != cache.device_id()))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s lives on device type %d id %d but the cache on device type %d id %d", fn,
         name, dev, t.device_id, cache.device_type(), cache.device_id());
  if (t.shape[0] > 0 && t.data == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s.data is NULL but it has %lld tokens", fn, name, ll(t.shape[0]));
  // Every element's byte offset must be computable in 64 bits: bound the span of the tensor.
  {
    int64_t span = 0;
    bool overflow = false;
    for (int i = 0; i < 3 && t.shape[0] > 0; ++i) {
      const int64_t s = t.strides[i];
      int64_t term = 0;
      if (s == std::numeric_limits<int64_t>::min() ||
          __builtin_mul_overflow(t.shape[i] - 1, s < 0 ? -s : s, &term) || __builtin_add_overflow(span, term, &span))
        overflow = true;
    }
    if (overflow || span > (std::numeric_limits<int64_t>::max() / 8))
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s strides [%lld, %lld, %lld] with shape [%lld, %lld, %lld] overflow 64-bit offsets",
           fn, name, ll(t.strides[0]), ll(t.strides[1]), ll(t.strides[2]), ll(t.shape[0]), ll(t.shape[1]),
           ll(t.shape[2]));
  }
  TensorArg in;
  in.data = t.data;
  in.dtype = t.dtype;
  in.itemsize = static_cast<int32_t>(dtype_size(t.dtype));
  in.stride_t = t.strides[0];
  in.stride_h = t.strides[1];
  in.stride_d = t.strides[2];
  return in;
}

void prepare_concat(const Cache& cache, int64_t layer, const kvp_tensor& key, const kvp_tensor& value,
                    const Metadata& md, PreparedConcat& out, const char* fn) {
  cache.check_healthy(fn);
  cache.check_layer(layer, fn);
  const Layout& L = cache.layout();
  ConcatJob& job = out.job;  // every field is set below
  // All H heads, or a shard's own heads (the shape says which; equal counts are the same heads).
  const HeadRange local = tensor_heads(L);
  const bool whole = key.ndim != 3 || key.shape[1] == L.num_kv_heads;
  const int64_t H = whole ? L.num_kv_heads : local.end - local.begin;
  const char* what = !L.shard ? "the cache has num_kv_heads" : whole ? "this shard takes all num_kv_heads"
                                                                     : "this shard holds heads";
  job.key = check_input(cache, key, "key", H, what, fn);
  job.value = check_input(cache, value, "value", H, what, fn);
  job.head_offset = whole ? 0 : local.begin;
  if (key.shape[0] != value.shape[0])
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: key has %lld tokens but value has %lld", fn, ll(key.shape[0]),
         ll(value.shape[0]));
  job.dst = cache.layer_data(layer);
  job.layout = L;
  job.mode = L.v3 ? 3 : 2;
  job.h64 = L.h64 ? 1 : 0;
  job.cache_dtype = L.dtype;
  job.cache_itemsize = static_cast<int32_t>(L.itemsize);
  job.num_slots = L.num_pages * L.page_size;
  job.token_elems = L.token_elems;
  job.num_kv_heads = L.num_kv_heads;
  job.head_dim = L.head_dim;
  job.num_tokens = key.shape[0];

  const MetadataArrays& m = md.arrays();
  job.md = m;
  check_metadata_layout(m, L, fn);
  job.metadata_on_device = m.device_type != KVP_DEVICE_CPU ? 1 : 0;
  job.num_seqs = -1;
  job.num_valid_slices = -1;
  job.num_runs = -1;
  job.runs = nullptr;
  job.total_tokens = 0;
  job.call_bytes = 0;
  if (job.metadata_on_device) {
    if (m.device_type != cache.device_type())
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: metadata arrays live in CUDA device memory but the cache is on the CPU", fn);
    if (m.device_id != cache.device_id())
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: metadata lives on CUDA device %d but the cache on device %d", fn, m.device_id,
           cache.device_id());
    check_device_arrays(m, L.v3, !L.v3, fn);
    job.host_validated = 0;
    return;
  }
  out.plan = plan_for(cache, md, PlanKind::kWrite, job.num_tokens, nullptr, fn);
  const RankRuns mine = out.plan->runs_of(cache.shard().dp_rank);
  job.runs = out.plan->runs.data() + mine.first;
  job.num_runs = mine.count;
  job.total_tokens = mine.tokens;
  job.num_seqs = out.plan->num_seqs;
  job.num_valid_slices = out.plan->num_valid_slices;
  job.host_validated = 1;
}

void concatenate(Cache& cache, int64_t layer, const kvp_tensor& key, const kvp_tensor& value, const Metadata& md,
                 kvp_stream stream, const char* fn) {
  PreparedConcat prep;
  prepare_concat(cache, layer, key, value, md, prep, fn);
  cache.backend().concatenate(prep.job, stream);
  prep.plan.publish(md);
}

}  // namespace kvp::detail
