#include "core/concat.hpp"

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/dtype.hpp"
#include "core/math.hpp"
#include "core/rows.hpp"
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

namespace {

// Host validation of v2 slices into runs.
void runs_v2(const ConcatJob& job, HostVector<ConcatRun>& runs, int64_t& n_out, const char* fn) {
  const MetadataArrays& m = job.md;
  if (m.num_kv_update_slices_len < 1 || m.num_kv_update_slices == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: v2 metadata has no num_kv_update_slices", fn);
  const int64_t n = m.num_kv_update_slices[0];
  if (n < 0 || n > m.num_slices)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_kv_update_slices %lld is out of range [0, %lld] (slot_mapping columns)", fn,
         ll(n), ll(m.num_slices));
  const int32_t* dst = m.slot_mapping;
  const int32_t* src = m.slot_mapping + m.num_slices;
  const int32_t* len = m.slot_mapping + 2 * m.num_slices;
  runs.reserve(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t l = len[j], d = dst[j], s = src[j];
    if (l < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: slice %lld: length %lld is negative", fn, ll(j), ll(l));
    if (l == 0) continue;  // zero-length slices are no-ops (e.g. after data-parallel localization)
    if (d < 0 || d + l > job.num_slots)
      fail(KVP_ERR_INVALID_ARGUMENT,
           "%s: slice %lld: destination slots [%lld, %lld) are outside the cache's %lld slots (num_pages * page_size)",
           fn, ll(j), ll(d), ll(d + l), ll(job.num_slots));
    if (s < 0 || s + l > job.num_tokens)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: slice %lld: source tokens [%lld, %lld) are outside the %lld input tokens", fn,
           ll(j), ll(s), ll(s + l), ll(job.num_tokens));
    runs.push_back({s, d, l});
  }
  n_out = n;
}

// Host validation of v3 page-table metadata into runs (one per request and touched page).
void runs_v3(const ConcatJob& job, HostVector<ConcatRun>& runs, int64_t& seqs_out, const char* fn) {
  const MetadataArrays& m = job.md;
  const int64_t n = processed_rows(m, true, fn), W = m.pages_per_req, S = job.layout.page_size;
  check_page_rows(m, job.layout, n, job.num_tokens, false, fn);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t qs = token_start(m, r), kv_len = m.context_lens[r];
    const int64_t first = kv_len - (m.query_start_loc[r + 1] - m.query_start_loc[r]);
    for (int64_t pos = first; pos < kv_len;) {
      const int64_t page = m.pages_tables[r * W + pos / S], row = pos % S;
      const int64_t len = std::min(S - row, kv_len - pos);
      runs.push_back({qs + (pos - first), page * S + row, len});
      pos += len;
    }
  }
  seqs_out = n;
}

// Sorts the runs by destination (the order does not matter to the writers) and refuses overlaps.
void sort_and_check_no_overlap(HostVector<ConcatRun>& sorted, const char* fn) {
  if (sorted.size() < 2) return;
  std::sort(sorted.begin(), sorted.end(),
            [](const ConcatRun& a, const ConcatRun& b) { return a.dst_slot < b.dst_slot; });
  for (size_t x = 1; x < sorted.size(); ++x) {
    const ConcatRun& p = sorted[x - 1];
    const ConcatRun& c = sorted[x];
    if (c.dst_slot < p.dst_slot + p.len)
      fail(KVP_ERR_INVALID_ARGUMENT,
           "%s: two writes target slot %lld (from input tokens %lld and %lld); destinations must not overlap", fn,
           ll(c.dst_slot), ll(p.src + (c.dst_slot - p.dst_slot)), ll(c.src));
  }
}
}  // namespace

void prepare_concat(const Cache& cache, int64_t layer, const kvp_tensor& key, const kvp_tensor& value,
                    const Metadata& md, PreparedConcat& out, const char* fn) {
  cache.check_healthy(fn);
  cache.check_layer(layer, fn);
  const Layout& L = cache.layout();
  ConcatJob& job = out.job;
  job = ConcatJob{};
  const int64_t H = L.num_kv_heads;
  job.key = check_input(cache, key, "key", H, "the cache has num_kv_heads", fn);
  job.value = check_input(cache, value, "value", H, "the cache has num_kv_heads", fn);
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
  out.runs.clear();
  if (L.v3)
    runs_v3(job, out.runs, job.num_seqs, fn);
  else
    runs_v2(job, out.runs, job.num_valid_slices, fn);
  sort_and_check_no_overlap(out.runs, fn);
  int64_t total = 0;
  for (const ConcatRun& r : out.runs) total += r.len;
  job.runs = out.runs.data();
  job.num_runs = static_cast<int64_t>(out.runs.size());
  job.total_tokens = total;
  job.host_validated = 1;
}

void concatenate(Cache& cache, int64_t layer, const kvp_tensor& key, const kvp_tensor& value, const Metadata& md,
                 kvp_stream stream, const char* fn) {
  PreparedConcat prep(cache.allocator());
  prepare_concat(cache, layer, key, value, md, prep, fn);
  cache.backend().concatenate(prep.job, stream);
}

}  // namespace kvp::detail
