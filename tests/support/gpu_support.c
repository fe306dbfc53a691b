#include "gpu_support.h"

#include <string.h>

#if KVP_HAS_CUDA

int kvp_gpu_current_device(void) {
  int d = -1;
  CUDA_OK(cudaGetDevice(&d));
  return d;
}

void *kvp_gpu_upload(const void *host, size_t bytes) {
  void *d = NULL;
  CUDA_OK(cudaMalloc(&d, bytes));
  CUDA_OK(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
  return d;
}

void kvp_gpu_upload_i32(const int32_t *dev, const int32_t *src, int64_t len) {
  CUDA_OK(cudaMemcpy((void *)dev, src, (size_t)len * 4, cudaMemcpyHostToDevice));
}

static const int32_t *to_device(kvp_gpu_metadata *d, const int32_t *host, int64_t len) {
  if (host == NULL || len <= 0) return NULL;
  void *p = kvp_gpu_upload(host, (size_t)len * 4);
  d->bufs[d->nbufs++] = p;
  return (const int32_t *)p;
}

void kvp_gpu_metadata_make(kvp_gpu_metadata *d, const kvp_metadata *host) {
  kvp_metadata_desc desc;
  memset(d, 0, sizeof *d);
  assert_kvp_ok(kvp_metadata_desc_init(&desc, sizeof desc));
  assert_kvp_ok(kvp_metadata_get_desc(host, &desc));
  desc.pages_tables = to_device(d, desc.pages_tables, desc.num_reqs * desc.pages_per_req);
  desc.context_lens = to_device(d, desc.context_lens, desc.context_lens_len);
  desc.query_start_loc = to_device(d, desc.query_start_loc, desc.query_start_loc_len);
  desc.num_seqs = to_device(d, desc.num_seqs, desc.num_seqs_len);
  desc.slot_mapping = to_device(d, desc.slot_mapping, 3 * desc.num_slices);
  desc.num_kv_update_slices = to_device(d, desc.num_kv_update_slices, desc.num_kv_update_slices_len);
  desc.request_distribution = to_device(d, desc.request_distribution, desc.request_distribution_len);
  desc.position_ids = to_device(d, desc.position_ids, desc.position_ids_len);
  desc.device_type = KVP_DEVICE_CUDA;
  desc.device_id = kvp_gpu_current_device();
  assert_kvp_ok(kvp_metadata_create(&desc, &d->md));
}

void kvp_gpu_metadata_free(kvp_gpu_metadata *d) {
  assert_kvp_ok(kvp_metadata_destroy(d->md));
  for (int i = 0; i < d->nbufs; ++i) CUDA_OK(cudaFree(d->bufs[i]));
}

#endif
