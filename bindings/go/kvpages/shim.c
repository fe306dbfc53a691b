#include "shim.h"

#include <string.h>

#include "_cgo_export.h"

static const int32_t no_pages[1];

static kvp_serialize_options save_options(const int32_t *ids, uint32_t n, int select, uint64_t chunk) {
  kvp_serialize_options o;
  kvp_serialize_options_init(&o, sizeof o);
  if (select) {
    o.page_ids = ids ? ids : no_pages; /* non-NULL: an empty selection writes no page */
    o.num_page_ids = n;
  }
  o.chunk_bytes = chunk;
  return o;
}

kvp_status kvpgo_serialized_size(const kvp_cache *c, const int32_t *ids, uint32_t n, int select, uint64_t chunk,
                                 size_t *out) {
  kvp_serialize_options o = save_options(ids, n, select, chunk);
  return kvp_serialized_size(c, &o, out);
}

kvp_status kvpgo_serialize(const kvp_cache *c, const int32_t *ids, uint32_t n, int select, uint64_t chunk, void *dst,
                           size_t cap, size_t *written) {
  kvp_serialize_options o = save_options(ids, n, select, chunk);
  return kvp_serialize(c, &o, dst, cap, written);
}

static int32_t KVP_CALL write_cb(const void *data, size_t size, void *user_data) {
  return kvpgoWrite((void *)data, size, (uintptr_t)user_data);
}

static int32_t KVP_CALL read_cb(void *dst, size_t size, size_t *read_out, void *user_data) {
  return kvpgoRead(dst, size, read_out, (uintptr_t)user_data);
}

kvp_status kvpgo_serialize_to_writer(const kvp_cache *c, const int32_t *ids, uint32_t n, int select, uint64_t chunk,
                                     uintptr_t handle) {
  kvp_serialize_options o = save_options(ids, n, select, chunk);
  return kvp_serialize_to_writer(c, &o, write_cb, (void *)handle);
}

kvp_status kvpgo_serialize_to_file(const kvp_cache *c, const int32_t *ids, uint32_t n, int select, uint64_t chunk,
                                   const char *path) {
  kvp_serialize_options o = save_options(ids, n, select, chunk);
  return kvp_serialize_to_file(c, &o, path);
}

/* Fills the options of a load; the cache options live in the caller's frame. */
static void load_options(kvp_deserialize_options *o, kvp_cache_options *co, int32_t device_type,
                         int32_t device_id, uint64_t max_bytes) {
  kvp_deserialize_options_init(o, sizeof *o);
  kvp_cache_options_init(co, sizeof *co);
  co->device_type = device_type;
  co->device_id = device_id;
  o->cache_options = co;
  o->max_cache_bytes = max_bytes;
}

kvp_status kvpgo_deserialize_new(const void *src, size_t len, int32_t device_type, int32_t device_id,
                                 uint64_t max_bytes, kvp_cache **out) {
  kvp_deserialize_options o;
  kvp_cache_options co;
  load_options(&o, &co, device_type, device_id, max_bytes);
  return kvp_deserialize_new(src, len, &o, out);
}

kvp_status kvpgo_deserialize_new_from_reader(uintptr_t handle, int32_t device_type, int32_t device_id,
                                             uint64_t max_bytes, kvp_cache **out) {
  kvp_deserialize_options o;
  kvp_cache_options co;
  load_options(&o, &co, device_type, device_id, max_bytes);
  return kvp_deserialize_new_from_reader(read_cb, (void *)handle, &o, out);
}

kvp_status kvpgo_deserialize_new_from_file(const char *path, int32_t device_type, int32_t device_id,
                                           uint64_t max_bytes, kvp_cache **out) {
  kvp_deserialize_options o;
  kvp_cache_options co;
  load_options(&o, &co, device_type, device_id, max_bytes);
  return kvp_deserialize_new_from_file(path, &o, out);
}

kvp_status kvpgo_deserialize_into_from_reader(kvp_cache *c, uintptr_t handle, const int32_t *ids, uint32_t n) {
  return kvp_deserialize_into_from_reader(c, read_cb, (void *)handle, ids, n);
}

static void KVP_CALL misuse_cb(const char *what, void *user_data) {
  (void)user_data;
  kvpgoMisuse((char *)what);
}

void kvpgo_set_misuse_handler(int on) { kvp_set_misuse_handler(on ? misuse_cb : NULL, NULL); }
