/* C side of the Go binding's callbacks and of the calls whose option structs point at caller
 * memory: the structs are built here, on the C stack, for the duration of one call. */
#ifndef KVPAGES_GO_SHIM_H
#define KVPAGES_GO_SHIM_H
#include <stdint.h>
#include <kvpages.h>

kvp_status kvpgo_serialized_size(const kvp_cache *c, const int32_t *ids, uint32_t n, int select, uint64_t chunk,
                                 size_t *out);
kvp_status kvpgo_serialize(const kvp_cache *c, const int32_t *ids, uint32_t n, int select, uint64_t chunk, void *dst,
                           size_t cap, size_t *written);
kvp_status kvpgo_serialize_to_writer(const kvp_cache *c, const int32_t *ids, uint32_t n, int select, uint64_t chunk,
                                     uintptr_t handle);
kvp_status kvpgo_serialize_to_file(const kvp_cache *c, const int32_t *ids, uint32_t n, int select, uint64_t chunk,
                                   const char *path);
kvp_status kvpgo_deserialize_new(const void *src, size_t len, int32_t device_type, int32_t device_id,
                                 uint64_t max_bytes, kvp_cache **out);
kvp_status kvpgo_deserialize_new_from_reader(uintptr_t handle, int32_t device_type, int32_t device_id,
                                             uint64_t max_bytes, kvp_cache **out);
kvp_status kvpgo_deserialize_new_from_file(const char *path, int32_t device_type, int32_t device_id,
                                           uint64_t max_bytes, kvp_cache **out);
kvp_status kvpgo_deserialize_into_from_reader(kvp_cache *c, uintptr_t handle, const int32_t *ids, uint32_t n);
void kvpgo_set_misuse_handler(int on);
#endif
