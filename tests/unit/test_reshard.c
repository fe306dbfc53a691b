/* Serialization of shards and re-sharding (issue 15): a shard's blob says which slice it holds
 * (format 1.1), kvp_deserialize_new recreates the shard, kvp_deserialize_shards_into loads any
 * set of blobs that covers the target — round trips whole -> TP 4 -> TP 2 -> whole and DP 2 ->
 * DP 1 are byte-exact — and rejects sets that do not, changing nothing. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "shards.h"
#include "support.h"

#define PAGES 16
#define MAX_SHARDS 8

/* A config of the model with `tp` KV-head and `dp` page shards, always PAGES pages. */
static kvp_config model(kvp_layout v, kvp_dtype dt, int64_t H, int64_t D, int64_t tp, int64_t dp) {
  kvp_config c = kvp_test_sharded_config(v, dt, H, D, tp, dp);
  c.num_pages = PAGES;
  assert_kvp_ok(kvp_config_validate(&c));
  return c;
}

typedef struct blob {
  unsigned char *data;
  size_t size;
} blob;

static blob save(const kvp_cache *c) {
  blob b = {NULL, 0};
  assert_kvp_ok(kvp_serialized_size(c, NULL, &b.size));
  b.data = malloc(b.size);
  size_t written = 0;
  assert_kvp_ok(kvp_serialize(c, NULL, b.data, b.size, &written));
  assert_int_equal(written, b.size);
  return b;
}

static void load(kvp_cache *target, const blob *blobs, uint32_t n) {
  kvp_blob_ref refs[MAX_SHARDS];
  for (uint32_t i = 0; i < n; ++i) refs[i] = (kvp_blob_ref){blobs[i].data, blobs[i].size, NULL};
  assert_kvp_ok(kvp_deserialize_shards_into(target, refs, n));
}

/* Fills every layer of a cache with pseudo-random bytes. */
static void fill(kvp_cache *c, uint64_t seed) {
  const size_t n = kvp_test_layer_bytes(c);
  unsigned char *b = malloc(n);
  for (uint32_t l = 0; l < 2; ++l) {
    for (size_t i = 0; i < n; ++i) b[i] = (unsigned char)kvp_test_rand(&seed);
    assert_kvp_ok(kvp_cache_write_layer(c, l, b, n, NULL));
  }
  free(b);
}

static void assert_same_bytes(const kvp_cache *a, const kvp_cache *b) {
  for (uint32_t l = 0; l < 2; ++l) {
    size_t na, nb;
    unsigned char *x = kvp_test_layer_copy(a, l, &na), *y = kvp_test_layer_copy(b, l, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(x, y, na);
    free(x);
    free(y);
  }
}

static void assert_slices_of(const kvp_cache *whole, kvp_cache *const *shards, int n) {
  kvp_layout_info wl = {.struct_size = sizeof wl};
  assert_kvp_ok(kvp_cache_get_layout(whole, &wl));
  for (uint32_t l = 0; l < 2; ++l) {
    size_t size;
    unsigned char *w = kvp_test_layer_copy(whole, l, &size);
    for (int i = 0; i < n; ++i) kvp_test_assert_slice(w, &wl, shards[i], l);
    free(w);
  }
}

static int make_shards(const kvp_config *c, kvp_cache **out) {
  const int n = (int)(c->kv_head_shards * c->data_parallel_size);
  for (int i = 0; i < n; ++i)
    assert_kvp_ok(kvp_cache_create_shard(c, (int32_t)(i / c->data_parallel_size), (int32_t)(i % c->data_parallel_size),
                                         NULL, &out[i]));
  return n;
}

static void destroy_all(kvp_cache **c, blob *b, int n) {
  for (int i = 0; i < n; ++i) {
    if (c != NULL) assert_kvp_ok(kvp_cache_destroy(c[i]));
    if (b != NULL) free(b[i].data);
  }
}

/* whole -> TP a -> TP b -> whole, byte-exact (each step loads every blob of the previous one). */
static void round_trip(kvp_layout v, kvp_dtype dt, int64_t H, int64_t D, int64_t a, int64_t b) {
  const kvp_config c1 = model(v, dt, H, D, 1, 1), ca = model(v, dt, H, D, a, 1), cb = model(v, dt, H, D, b, 1);
  assert_int_equal(ca.kv_head_shards, a);  /* kept: the same dtype, so the same bytes */
  assert_int_equal(cb.kv_head_shards, b);
  assert_int_equal(ca.kvdtype, dt);
  kvp_cache *whole = NULL, *back = NULL, *sa[MAX_SHARDS], *sb[MAX_SHARDS];
  assert_kvp_ok(kvp_cache_create(&c1, NULL, &whole));
  fill(whole, (uint64_t)(H * 131 + D));
  blob bw = save(whole), ba[MAX_SHARDS], bb[MAX_SHARDS];
  const int na = make_shards(&ca, sa), nb = make_shards(&cb, sb);
  for (int i = 0; i < na; ++i) load(sa[i], &bw, 1);
  assert_slices_of(whole, sa, na);
  for (int i = 0; i < na; ++i) ba[i] = save(sa[i]);
  for (int i = 0; i < nb; ++i) load(sb[i], ba, (uint32_t)na);
  assert_slices_of(whole, sb, nb);
  for (int i = 0; i < nb; ++i) bb[i] = save(sb[i]);
  assert_kvp_ok(kvp_cache_create(&c1, NULL, &back));
  load(back, bb, (uint32_t)nb);
  assert_same_bytes(whole, back);
  destroy_all(sa, ba, na);
  destroy_all(sb, bb, nb);
  free(bw.data);
  assert_kvp_ok(kvp_cache_destroy(back));
  assert_kvp_ok(kvp_cache_destroy(whole));
}

static void test_round_trips_over_head_splits(void **state) {
  (void)state;
  round_trip(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 8, 128, 4, 2);
  round_trip(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 8, 64, 4, 2);       /* head_dim 64 */
  round_trip(KVP_LAYOUT_V2, KVP_DTYPE_F32, 4, 32, 8, 2);        /* v2, K and V of a head apart */
  round_trip(KVP_LAYOUT_V3, KVP_DTYPE_F8_E4M3FN, 8, 128, 4, 2);
  round_trip(KVP_LAYOUT_V3, KVP_DTYPE_F32, 3, 32, 2, 3);        /* half heads at the cuts */
}

/* DP 2 -> DP 1 and back, and TP x DP shards from a whole save. */
static void test_round_trips_over_page_blocks(void **state) {
  (void)state;
  const kvp_config c1 = model(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 1, 1);
  const kvp_config c22 = model(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 2, 2);
  const kvp_config c12 = model(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 1, 2);
  kvp_cache *whole = NULL, *back = NULL, *s22[MAX_SHARDS], *s12[MAX_SHARDS];
  assert_kvp_ok(kvp_cache_create(&c1, NULL, &whole));
  fill(whole, 7);
  blob bw = save(whole), b22[MAX_SHARDS], b12[MAX_SHARDS];
  const int n22 = make_shards(&c22, s22), n12 = make_shards(&c12, s12);
  for (int i = 0; i < n22; ++i) load(s22[i], &bw, 1);
  assert_slices_of(whole, s22, n22);
  for (int i = 0; i < n22; ++i) b22[i] = save(s22[i]);
  for (int i = 0; i < n12; ++i) load(s12[i], b22, (uint32_t)n22);  /* TP 2 x DP 2 -> DP 2 */
  assert_slices_of(whole, s12, n12);
  for (int i = 0; i < n12; ++i) b12[i] = save(s12[i]);
  assert_kvp_ok(kvp_cache_create(&c1, NULL, &back));
  load(back, b12, (uint32_t)n12);  /* DP 2 -> DP 1 */
  assert_same_bytes(whole, back);
  /* A shard's blob of a subset of its pages: only those pages change. */
  kvp_serialize_options so = KVP_SERIALIZE_OPTIONS_INIT;
  int32_t ids[] = {9, 12};
  so.page_ids = ids;
  so.num_page_ids = 2;
  size_t size = 0;
  assert_kvp_ok(kvp_serialized_size(s12[1], &so, &size));
  unsigned char *sub = malloc(size);
  assert_kvp_ok(kvp_serialize(s12[1], &so, sub, size, &size));
  int32_t outside[] = {3};
  so.page_ids = outside;
  so.num_page_ids = 1;
  assert_kvp_status(kvp_serialized_size(s12[1], &so, &size), KVP_ERR_INVALID_ARGUMENT,
                    "page_ids[0] = 3 is out of range [8, 16) (the pages of this shard)");
  destroy_all(s22, b22, n22);
  destroy_all(s12, b12, n12);
  free(sub);
  free(bw.data);
  assert_kvp_ok(kvp_cache_destroy(back));
  assert_kvp_ok(kvp_cache_destroy(whole));
}

/* A shard's blob: format 1.1, flagged, the slice and the config's sharding in the header;
 * kvp_deserialize_new recreates the shard; kvp_deserialize_into accepts only the same slice. An
 * unsharded config still writes format 1.0. */
static void test_shard_blobs(void **state) {
  (void)state;
  const kvp_config c = model(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 8, 128, 4, 2);
  kvp_cache *s = NULL, *other = NULL, *back = NULL;
  assert_kvp_ok(kvp_cache_create_shard(&c, 2, 1, NULL, &s));
  fill(s, 3);
  blob b = save(s);
  kvp_serialized_info info = KVP_SERIALIZED_INFO_INIT;
  assert_kvp_ok(kvp_serialized_inspect(b.data, b.size, KVP_INSPECT_VERIFY, &info));
  assert_int_equal(info.format_minor, 1);
  assert_int_equal(info.header_size, 256);
  assert_int_equal(info.flags, KVP_FORMAT_FLAG_SHARD);
  assert_int_equal(info.config.kv_head_shards, 4);
  assert_int_equal(info.config.data_parallel_size, 2);
  assert_int_equal(info.shard.tp_rank, 2);
  assert_int_equal(info.shard.tp_size, 4);
  assert_int_equal(info.shard.dp_rank, 1);
  assert_int_equal(info.shard.page_begin, 8);
  assert_int_equal(info.shard.slot_begin, 8);
  assert_int_equal(info.first_page_id, 8);
  assert_int_equal(info.last_page_id, 15);
  assert_kvp_ok(kvp_deserialize_new(b.data, b.size, NULL, &back));
  kvp_shard_info si = KVP_SHARD_INFO_INIT;
  assert_kvp_ok(kvp_cache_get_shard(back, &si));
  assert_int_equal(si.tp_rank, 2);
  assert_int_equal(si.dp_rank, 1);
  assert_same_bytes(s, back);
  /* Into the same slice: fine; into another: refused, unchanged. */
  assert_kvp_ok(kvp_deserialize_into(back, b.data, b.size, NULL, 0));
  assert_kvp_ok(kvp_cache_create_shard(&c, 1, 1, NULL, &other));
  assert_kvp_status(kvp_deserialize_into(other, b.data, b.size, NULL, 0), KVP_ERR_FORMAT_MISMATCH,
                    "the blob holds slice tp 2/4, dp 1/2 but the target cache is slice tp 1/4, dp 1/2");
  size_t n;
  unsigned char *z = kvp_test_layer_copy(other, 0, &n);
  for (size_t i = 0; i < n; ++i) assert_int_equal(z[i], 0);
  free(z);
  /* Through a file too. */
  char path[] = "/tmp/kvp_reshard_XXXXXX";
  const int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_kvp_ok(kvp_serialize_to_file(s, NULL, path));
  kvp_blob_ref ref = {NULL, 0, path};
  kvp_cache *whole_tp = NULL;
  const kvp_config c1 = model(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 8, 128, 1, 1);
  assert_kvp_ok(kvp_cache_create(&c1, NULL, &whole_tp));
  assert_kvp_status(kvp_deserialize_shards_into(whole_tp, &ref, 1), KVP_ERR_FORMAT_MISMATCH,
                    "combined entries [0, 8) of page 8, which the target holds, are in no blob");
  assert_kvp_status(kvp_deserialize_shards_into(other, &ref, 1), KVP_ERR_FORMAT_MISMATCH,
                    "combined entries [4, 8) of page 8, which the target holds, are in no blob");
  unlink(path);
  /* An unsharded config's blob is 1.0, as before 1.4. */
  kvp_cache *plain = NULL;
  assert_kvp_ok(kvp_cache_create(&c1, NULL, &plain));
  blob pb = save(plain);
  assert_kvp_ok(kvp_serialized_inspect(pb.data, pb.size, 0, &info));
  assert_int_equal(info.format_minor, 0);
  assert_int_equal(info.header_size, 192);
  assert_int_equal(info.flags, 0);
  assert_int_equal(info.shard.tp_size, 1);
  free(pb.data);
  free(b.data);
  assert_kvp_ok(kvp_cache_destroy(plain));
  assert_kvp_ok(kvp_cache_destroy(whole_tp));
  assert_kvp_ok(kvp_cache_destroy(other));
  assert_kvp_ok(kvp_cache_destroy(back));
  assert_kvp_ok(kvp_cache_destroy(s));
}

/* Sets that do not cover the target, overlap, mix models or are damaged: refused, unchanged. */
static void test_rejected_sets(void **state) {
  (void)state;
  const kvp_config c1 = model(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 8, 128, 1, 1);
  const kvp_config c4 = model(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 8, 128, 4, 1);
  const kvp_config c2 = model(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 8, 128, 2, 1);
  kvp_cache *whole = NULL, *s4[MAX_SHARDS], *s2[MAX_SHARDS], *target = NULL;
  assert_kvp_ok(kvp_cache_create(&c1, NULL, &whole));
  fill(whole, 11);
  blob bw = save(whole), b4[MAX_SHARDS];
  const int n4 = make_shards(&c4, s4), n2 = make_shards(&c2, s2);
  for (int i = 0; i < n4; ++i) {
    load(s4[i], &bw, 1);
    b4[i] = save(s4[i]);
  }
  assert_kvp_ok(kvp_cache_create(&c1, NULL, &target));
  fill(target, 99);
  size_t n;
  unsigned char *before = kvp_test_layer_copy(target, 0, &n), *before2 = kvp_test_layer_copy(s2[1], 0, &n);
  kvp_blob_ref refs[MAX_SHARDS + 1];
  for (int i = 0; i < n4; ++i) refs[i] = (kvp_blob_ref){b4[i].data, b4[i].size, NULL};
  /* A missing shard. */
  assert_kvp_status(kvp_deserialize_shards_into(target, refs, 3), KVP_ERR_FORMAT_MISMATCH,
                    "combined entries [12, 16) of page 0, which the target holds, are in no blob");
  /* Only other shards' entries of the pages the target needs. */
  assert_kvp_status(kvp_deserialize_shards_into(s2[1], refs, 2), KVP_ERR_FORMAT_MISMATCH,
                    "combined entries [8, 16) of page 0, which the target holds, are in no blob");
  /* Overlap: the whole save and a shard's. */
  refs[4] = (kvp_blob_ref){bw.data, bw.size, NULL};
  assert_kvp_status(kvp_deserialize_shards_into(target, refs, 5), KVP_ERR_FORMAT_MISMATCH,
                    "blobs 0 and 4 both hold entries [0, 4) of page 0");
  /* Another model. */
  const kvp_config other = model(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 1, 1);
  kvp_cache *oc = NULL;
  assert_kvp_ok(kvp_cache_create(&other, NULL, &oc));
  blob ob = save(oc);
  refs[3] = (kvp_blob_ref){ob.data, ob.size, NULL};
  assert_kvp_status(kvp_deserialize_shards_into(target, refs, 4), KVP_ERR_FORMAT_MISMATCH,
                    "blob 3's num_kv_heads is 4 but the target cache's is 8");
  /* A damaged blob (one payload byte) fails its checksum before anything is written. */
  refs[3] = (kvp_blob_ref){b4[3].data, b4[3].size, NULL};
  b4[3].data[b4[3].size - 20] ^= 0x40;
  assert_kvp_status(kvp_deserialize_shards_into(target, refs, 4), KVP_ERR_FORMAT_CHECKSUM, "checksum mismatch");
  b4[3].data[b4[3].size - 20] ^= 0x40;
  /* A file that cannot be opened (after good blobs): nothing written either. */
  refs[3] = (kvp_blob_ref){NULL, 0, "/nonexistent/kvp-reshard.kvps"};
  assert_kvp_status(kvp_deserialize_shards_into(target, refs, 4), KVP_ERR_IO, "cannot open '/nonexistent/kvp-reshard.kvps'");
  refs[3] = (kvp_blob_ref){b4[3].data, b4[3].size, NULL};
  /* Bad arguments. */
  assert_kvp_status(kvp_deserialize_shards_into(target, NULL, 1), KVP_ERR_INVALID_ARGUMENT, "num_blobs");
  assert_kvp_status(kvp_deserialize_shards_into(target, refs, 0), KVP_ERR_INVALID_ARGUMENT, "num_blobs");
  kvp_blob_ref both = {bw.data, bw.size, "/nonexistent"};
  assert_kvp_status(kvp_deserialize_shards_into(target, &both, 1), KVP_ERR_INVALID_ARGUMENT,
                    "blobs[0] must give either data or path");
  unsigned char *after = kvp_test_layer_copy(target, 0, &n), *after2 = kvp_test_layer_copy(s2[1], 0, &n);
  assert_memory_equal(before, after, kvp_test_layer_bytes(target));
  assert_memory_equal(before2, after2, kvp_test_layer_bytes(s2[1]));
  /* And the good set works. */
  assert_kvp_ok(kvp_deserialize_shards_into(target, refs, 4));
  assert_same_bytes(whole, target);
  free(before);
  free(before2);
  free(after);
  free(after2);
  free(ob.data);
  free(bw.data);
  destroy_all(s4, b4, n4);
  destroy_all(s2, NULL, n2);
  assert_kvp_ok(kvp_cache_destroy(oc));
  assert_kvp_ok(kvp_cache_destroy(target));
  assert_kvp_ok(kvp_cache_destroy(whole));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trips_over_head_splits),
      cmocka_unit_test(test_round_trips_over_page_blocks),
      cmocka_unit_test(test_shard_blobs),
      cmocka_unit_test(test_rejected_sets),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
