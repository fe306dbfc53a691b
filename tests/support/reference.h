/* The independent reference of the tests and fuzz targets: a PRNG, the element codec and the
 * SPEC's layout formulas, and a reference writer of token slots. Plain C, no cmocka: the fuzz
 * targets (tests/fuzz) link it too. */
#ifndef KVP_TEST_REFERENCE_H
#define KVP_TEST_REFERENCE_H

#include <stdint.h>

#include "kvpages.h"

/* Deterministic PRNG for randomized tests. */
uint64_t kvp_test_rand(uint64_t *state);
/* Uniform integer in [lo, hi]. */
int64_t kvp_test_rand_range(uint64_t *state, int64_t lo, int64_t hi);

/* Element codes of the input and storage dtypes, computed independently of the library (double
 * arithmetic): exponent bits E, mantissa bits M, fn = finite only (e4m3fn: no infinity, one NaN). */
typedef struct kvp_test_fmt {
  int E, M, fn;
} kvp_test_fmt;
kvp_test_fmt kvp_test_fmt_of(kvp_dtype dtype);
/* Bytes per element. */
int kvp_test_dtype_size(kvp_dtype dtype);
/* The value of a code; NaN codes give a NaN of the code's sign. */
double kvp_test_decode(uint32_t code, kvp_dtype dtype);
/* The code of x, rounded to nearest even without saturation (overflow: infinity, e4m3fn: NaN); a
 * NaN gives the dtype's canonical quiet NaN with x's sign (bf16 0x7FC0 / 0xFFC0, f16 0x7E00 /
 * 0xFE00: a double carries no f32 payload, so payload rules are checked by test_nan_payloads).
 * f32: the code of (float)x. */
uint32_t kvp_test_encode(double x, kvp_dtype dtype);
/* A code of `size` bytes at p (little-endian host), and its store. */
uint32_t kvp_test_load_code(const unsigned char *p, int size);
void kvp_test_store_code(unsigned char *p, int size, uint32_t code);

/* A layer's byte geometry computed from the SPEC formulas, independently of the library: v3 or
 * v2, the head_dim-64 packing, KV heads H, head dim D, page size S, pages P, the pack factor,
 * combined heads per slot C, stored lanes per head Dst, bytes per element isz. */
typedef struct kvp_test_geom {
  int v3, h64;
  int64_t H, D, S, P, pack, C, Dst, isz;
} kvp_test_geom;
kvp_test_geom kvp_test_geom_of(kvp_layout layout, kvp_dtype dtype, int64_t H, int64_t D, int64_t S, int64_t P);
/* Bytes of one token slot (all heads, keys and values, padding included). */
int64_t kvp_test_token_bytes(const kvp_test_geom *g);
/* Byte offset of lane d of K (kv 0) or V (kv 1) of KV head h at flat slot `slot`. */
int64_t kvp_test_elem_off(const kvp_test_geom *g, int64_t slot, int64_t h, int kv, int64_t d);

/* The stored code of `code` (dtype sd) in a cache of dtype dd: the same code when sd == dd, else
 * decoded exactly and re-encoded (round to nearest even, no saturation). */
uint32_t kvp_test_ref_convert(uint32_t code, kvp_dtype sd, kvp_dtype dd);
/* The code of element [tok, h, d] of a host tensor (strides in elements). */
uint32_t kvp_test_tensor_code(const kvp_tensor *t, int64_t tok, int64_t h, int64_t d);
/* Writes the expected whole slot `slot` of a layer's `pages` (cache dtype dd): zeros, then row
 * `src` of k and v converted. */
void kvp_test_ref_write_token(unsigned char *pages, const kvp_test_geom *g, kvp_dtype dd, const kvp_tensor *k,
                              const kvp_tensor *v, int64_t src, int64_t slot);

/* kvp_config_create of a config with exactly num_pages pages (budget from the true page bytes, no
 * safety margin) into *out; the library's status. */
kvp_status kvp_test_sized_config(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t page_size,
                                 int64_t num_pages, kvp_dtype dtype, kvp_layout layout, int64_t max_len,
                                 kvp_config *out);

/* A [T, H, D] tensor descriptor over `data` with element strides st, sh, sd (device_id 0). */
kvp_tensor kvp_test_tensor_strided(void *data, kvp_dtype dtype, int64_t T, int64_t H, int64_t D, int64_t st,
                                   int64_t sh, int64_t sd, kvp_device_type device);
/* The same, contiguous and row-major. */
kvp_tensor kvp_test_tensor(void *data, kvp_dtype dtype, int64_t T, int64_t H, int64_t D, kvp_device_type device);

#endif
