/**
 * @file kvpages/types.h
 * @brief Element types, layout versions, devices, tensor descriptors, streams, and the integer
 *        helpers of the reference (cdiv, alignment, packing, page bytes, update slices).
 *
 * @defgroup kvp_types Types and helpers
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_TYPES_H
#define KVPAGES_TYPES_H

#include "kvpages/common.h"
#include "kvpages/status.h"

KVP_BEGIN_DECLS

/** Element type of cache pages or of input tensors; one of the `KVP_DTYPE_*` constants. */
typedef uint32_t kvp_dtype;

/** No type / use the default (bf16 where a default exists). */
#define KVP_DTYPE_INVALID 0u
/** IEEE binary32. Reference name "fp32". Packing 1. */
#define KVP_DTYPE_F32 1u
/** IEEE binary16. Reference name "fp16". Packing 2. */
#define KVP_DTYPE_F16 2u
/** bfloat16. Reference name "bf16". Packing 2. */
#define KVP_DTYPE_BF16 3u
/** 8-bit float, 4 exponent bits, finite only (OCP e4m3fn, max 448). Name "fp8_e4m3fn". Packing 4. */
#define KVP_DTYPE_F8_E4M3FN 4u
/** 8-bit float, 5 exponent bits, IEEE-like with inf/NaN (max 57344). Name "fp8_e5m2" (alias "fp8"). Packing 4. */
#define KVP_DTYPE_F8_E5M2 5u
/** IEEE binary64. Name "fp64"; known by name only: cache creation rejects it (packing). */
#define KVP_DTYPE_F64 6u
/** fp8 e4m3 "fnuz" variant. Name "fp8_e4m3fnuz"; known by name only, not a storage type. */
#define KVP_DTYPE_F8_E4M3FNUZ 7u
/** fp8 e4m3 with bias 11, "fnuz". Name "fp8_e4m3b11fnuz"; known by name only, not a storage type. */
#define KVP_DTYPE_F8_E4M3B11FNUZ 8u
/** fp8 e5m2 "fnuz" variant. Name "fp8_e5m2fnuz"; known by name only, not a storage type. */
#define KVP_DTYPE_F8_E5M2FNUZ 9u

/** Storage layout version of the cache pages; one of the `KVP_LAYOUT_*` constants. */
typedef uint32_t kvp_layout;
/** Default layout ("v3" where a default exists). */
#define KVP_LAYOUT_DEFAULT 0u
/** Plain layout `[pages, page_size, 2*kv_heads, head_dim]`, K/V interleaved per head. Name "v2". */
#define KVP_LAYOUT_V2 2u
/** Packed layout `[pages, page_size, groups, packing, storage_head_dim]` (head_dim 64 special case). Name "v3". */
#define KVP_LAYOUT_V3 3u

/** Device kind of a cache or tensor. Values match DLPack's `DLDeviceType`. */
typedef int32_t kvp_device_type;
/** Host memory. */
#define KVP_DEVICE_CPU 1
/** CUDA device memory. */
#define KVP_DEVICE_CUDA 2

/**
 * @brief A CUDA stream, ABI-identical to `cudaStream_t` / `CUstream`; NULL is the legacy default
 *        stream. Non-CUDA callers pass NULL. Declared without CUDA headers.
 */
typedef struct CUstream_st *kvp_stream;

/** Maximum rank of a ::kvp_tensor. */
#define KVP_MAX_DIMS 6

/**
 * @brief A non-owning description of a strided tensor (like DLPack's `DLTensor`).
 *
 * Element (i0, i1, …) lives at `data + sizeof(elem) * (i0*strides[0] + i1*strides[1] + …)`.
 * Strides are counted in **elements**, not bytes. Unused trailing dims are 0.
 */
typedef struct kvp_tensor {
  void *data;                     /**< First element (host or device pointer). */
  kvp_dtype dtype;                /**< Element type, a `KVP_DTYPE_*`. */
  int32_t ndim;                   /**< Rank, 1 … ::KVP_MAX_DIMS. */
  int64_t shape[KVP_MAX_DIMS];    /**< Extent of each dim. */
  int64_t strides[KVP_MAX_DIMS];  /**< Stride of each dim in elements. */
  kvp_device_type device_type;    /**< ::KVP_DEVICE_CPU or ::KVP_DEVICE_CUDA. */
  int32_t device_id;              /**< CUDA ordinal; 0 for the CPU. */
} kvp_tensor;

/**
 * @brief Looks up a dtype by its reference string name.
 *
 * Accepts the spellings of the reference: "bf16"/"bfloat16", "fp16"/"float16", "fp32"/"float32",
 * "fp64"/"float64", "fp8" (= e5m2), "fp8_e4m3fn"/"float8_e4m3fn", "fp8_e5m2"/"float8_e5m2",
 * "fp8_e4m3fnuz"/"float8_e4m3fnuz", "fp8_e4m3b11fnuz"/"float8_e4m3b11fnuz",
 * "fp8_e5m2fnuz"/"float8_e5m2fnuz". Matching is exact (case-sensitive).
 *
 * @param[in] name NUL-terminated name, not NULL.
 * @param[out] out Receives the dtype, not NULL; unchanged on failure.
 * @retval KVP_OK Found.
 * @retval KVP_ERR_INVALID_ARGUMENT `name` or `out` is NULL.
 * @retval KVP_ERR_NOT_FOUND The name is not a known dtype (e.g. "int8").
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_dtype_from_string(const char *name, kvp_dtype *out);

/**
 * @brief Returns the canonical reference name of a dtype ("bf16", "fp8_e5m2", …).
 *
 * @param[in] dtype A `KVP_DTYPE_*` value.
 * @return A static string, or NULL when `dtype` is not a known dtype.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API const char *KVP_CALL kvp_dtype_name(kvp_dtype dtype);

/**
 * @brief Returns the width of a dtype in bits (32, 16, 8 or 64), or 0 for an unknown dtype.
 * @param[in] dtype A `KVP_DTYPE_*` value.
 * @return Bits per element, 0 when unknown.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API uint32_t KVP_CALL kvp_dtype_bits(kvp_dtype dtype);

/**
 * @brief Converts `count` host elements from one float dtype to another, with the rounding the
 *        cache applies when it stores (so the results are the bytes kvp_concatenate() writes).
 *
 * The dtypes are ::KVP_DTYPE_F32, ::KVP_DTYPE_F16, ::KVP_DTYPE_BF16, ::KVP_DTYPE_F8_E4M3FN and
 * ::KVP_DTYPE_F8_E5M2, in any pair (equal dtypes copy). Narrowing rounds to nearest, ties to
 * even, keeps subnormals and does not saturate: a value beyond the largest finite one becomes
 * infinity (NaN for fp8 e4m3fn, which has no infinity); NaN stays NaN with its sign: bf16 gets
 * the canonical quiet NaN 0x7FC0 / 0xFFC0 (as JAX / ml_dtypes), f16 and fp8 e5m2 keep the top
 * payload bits and set the quiet bit (f32 0x7FA00000 gives bf16 0x7FC0, f16 0x7F00), fp8 e4m3fn
 * has one NaN per sign. Widening is exact, NaN payloads included. The bytes do not depend on the
 * calling thread's floating-point environment: its rounding mode (fesetround) and flush-to-zero /
 * denormals-are-zero flags change nothing (since 1.5.1). Elements are read and written as bytes
 * (no alignment needed), little-endian bit patterns as in the cache. Large conversions run on the
 * library's threads (`KVP_NUM_THREADS`).
 *
 * Use it to read a bf16, f16 or fp8 view as f32, or to prepare keys in the cache's dtype.
 * @code
 * float out[128];
 * kvp_convert(bf16_row, KVP_DTYPE_BF16, out, KVP_DTYPE_F32, 128);
 * @endcode
 *
 * @param[in] src `count` elements of `src_dtype`; may be NULL when `count` is 0.
 * @param[in] src_dtype Dtype of `src`.
 * @param[out] dst Room for `count` elements of `dst_dtype`; may be NULL when `count` is 0. Must
 *             not overlap `src`, except `dst == src` when both dtypes have the same width (in
 *             place, e.g. bf16 → f16).
 * @param[in] dst_dtype Dtype of `dst`.
 * @param[in] count Elements to convert.
 * @retval KVP_OK Converted.
 * @retval KVP_ERR_INVALID_ARGUMENT A pointer is NULL while `count` > 0, the buffers overlap, or
 *         `count` bytes would overflow the address space; `dst` unchanged.
 * @retval KVP_ERR_NOT_FOUND A dtype is not a `KVP_DTYPE_*` value; `dst` unchanged.
 * @retval KVP_ERR_UNSUPPORTED A dtype is known but not converted (fp64, the fnuz fp8 types);
 *         `dst` unchanged.
 * @threadsafety Thread-safe.
 * @since 1.2
 */
KVP_API kvp_status KVP_CALL kvp_convert(const void *src, kvp_dtype src_dtype, void *dst, kvp_dtype dst_dtype,
                                        size_t count);

/**
 * @brief Looks up a layout version by name ("v2" or "v3").
 * @param[in] name NUL-terminated name, not NULL.
 * @param[out] out Receives ::KVP_LAYOUT_V2 or ::KVP_LAYOUT_V3, not NULL; unchanged on failure.
 * @retval KVP_OK Found.
 * @retval KVP_ERR_INVALID_ARGUMENT A pointer is NULL.
 * @retval KVP_ERR_NOT_FOUND Not "v2" or "v3".
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_layout_from_string(const char *name, kvp_layout *out);

/**
 * @brief Returns "v2" or "v3" for a layout version, NULL for anything else.
 * @param[in] layout A `KVP_LAYOUT_*` value (::KVP_LAYOUT_DEFAULT is not a name).
 * @return A static string or NULL.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API const char *KVP_CALL kvp_layout_name(kvp_layout layout);

/**
 * @brief `cdiv(a, b) = floor((a + b - 1) / b)` with floor (Python) division, in 64 bits.
 *
 * Negative operands follow floor division (cdiv(-1, 4) = 0, cdiv(5, -2) = -1), as in the
 * reference.
 *
 * @param[in] a Dividend.
 * @param[in] b Divisor, not 0.
 * @param[out] out Result, not NULL; unchanged on failure.
 * @retval KVP_OK Computed.
 * @retval KVP_ERR_INVALID_ARGUMENT `b` is 0, `out` is NULL, or the result overflows int64.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_cdiv(int64_t a, int64_t b, int64_t *out);

/**
 * @brief `align_to_multiple(v, m) = cdiv(v, m) * m` in 64 bits.
 * @param[in] v Value.
 * @param[in] m Multiple, not 0.
 * @param[out] out Result, not NULL; unchanged on failure.
 * @retval KVP_OK Computed.
 * @retval KVP_ERR_INVALID_ARGUMENT `m` is 0, `out` is NULL, or the result overflows int64.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_align_to_multiple(int64_t v, int64_t m, int64_t *out);

/**
 * @brief Largest power of two ≤ n, or 0 when n ≤ 0.
 * @param[in] n Any value.
 * @return The power of two, or 0.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API int64_t KVP_CALL kvp_previous_power_of_2(int64_t n);

/**
 * @brief Elements of a dtype that share one 32-bit word: 32 / bits (f32 → 1, f16/bf16 → 2, fp8 → 4).
 * @param[in] dtype A `KVP_DTYPE_*` value.
 * @param[out] out Packing, not NULL; unchanged on failure.
 * @retval KVP_OK Computed.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL, or 32 is not a multiple of the width (fp64).
 * @retval KVP_ERR_NOT_FOUND Unknown dtype.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_dtype_packing(kvp_dtype dtype, int64_t *out);

/**
 * @brief Bytes of one page of one layer in the generic v3 layout (the reference's
 *        `get_page_size_bytes`).
 *
 * `page_size * align(2*num_kv_heads, packing) * cdiv(head_size, 128)*128 * bits / 8`. Like the
 * reference it ignores the head_dim-64 layout, so for head_size 64 it reports twice the real v3
 * page size (use kvp_config_get_layout() for true sizes).
 *
 * @param[in] page_size Tokens per page, > 0.
 * @param[in] num_kv_heads KV heads, > 0.
 * @param[in] head_size Head dim, > 0.
 * @param[in] dtype Storage dtype.
 * @param[out] out Bytes, not NULL; unchanged on failure.
 * @retval KVP_OK Computed.
 * @retval KVP_ERR_INVALID_ARGUMENT A size is ≤ 0, `out` is NULL, the dtype has no packing (fp64), or the result overflows.
 * @retval KVP_ERR_NOT_FOUND Unknown dtype.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_page_size_bytes(int64_t page_size, int64_t num_kv_heads,
                                                int64_t head_size, kvp_dtype dtype, int64_t *out);

/**
 * @brief Update slices per page batch of the v2 update kernel (the reference's
 *        `get_num_slices_per_kv_cache_update_page`).
 *
 * `n = 16 MiB / page_size_bytes`; n must be positive; the result is the largest power of two
 * ≤ n, capped at 64.
 *
 * @param[in] page_size_bytes Bytes of one page of one layer, > 0.
 * @param[out] out Result in {1, 2, 4, …, 64}, not NULL; unchanged on failure.
 * @retval KVP_OK Computed.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL, `page_size_bytes` ≤ 0, or a page exceeds 16 MiB
 *         ("Number of slices should be positive").
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_num_slices_per_kv_cache_update_page(int64_t page_size_bytes,
                                                                    int64_t *out);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_TYPES_H */
