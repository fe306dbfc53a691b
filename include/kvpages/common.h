/**
 * @file kvpages/common.h
 * @brief Export, calling-convention and deprecation macros shared by every kvpages header.
 *
 * @defgroup kvp_common Common macros
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_COMMON_H
#define KVPAGES_COMMON_H

#include <stddef.h>
#include <stdint.h>

#if defined(KVP_BUILDING_LIBRARY) && defined(KVP_SHARED_IMPORT)
#error "KVP_BUILDING_LIBRARY and KVP_SHARED_IMPORT must not both be defined"
#endif

#if defined(_WIN32)
#if defined(KVP_BUILDING_LIBRARY)
#define KVP_API __declspec(dllexport)
#elif defined(KVP_SHARED_IMPORT) && !defined(KVP_STATIC)
#define KVP_API __declspec(dllimport)
#else
#define KVP_API
#endif
#elif defined(__GNUC__) || defined(__clang__)
/** Marks a symbol exported from the kvpages shared library. */
#define KVP_API __attribute__((visibility("default")))
#else
#define KVP_API
#endif

#if defined(_WIN32) && defined(_M_IX86)
#define KVP_CALL __cdecl
#else
/** Calling convention of every kvpages function and callback (empty except on 32-bit Windows). */
#define KVP_CALL
#endif

#if defined(KVP_DISABLE_DEPRECATION_WARNINGS)
#define KVP_DEPRECATED(msg)
#elif defined(__cplusplus) && __cplusplus >= 201402L
#define KVP_DEPRECATED(msg) [[deprecated(msg)]]
#elif defined(__GNUC__) || defined(__clang__)
#define KVP_DEPRECATED(msg) __attribute__((deprecated(msg)))
#elif defined(_MSC_VER)
#define KVP_DEPRECATED(msg) __declspec(deprecated(msg))
#else
#define KVP_DEPRECATED(msg)
#endif
/**
 * @def KVP_DEPRECATED(msg)
 * @brief Marks a declaration deprecated with a message naming its replacement; empty when
 *        `KVP_DISABLE_DEPRECATION_WARNINGS` is defined.
 */

#ifdef __cplusplus
#define KVP_BEGIN_DECLS extern "C" {
#define KVP_END_DECLS }
#else
/** Opens an `extern "C"` block under C++ (empty in C). */
#define KVP_BEGIN_DECLS
/** Closes an `extern "C"` block under C++ (empty in C). */
#define KVP_END_DECLS
#endif

#ifdef __cplusplus
#define KVP__OPTIONS_INIT(type, version) {sizeof(type), (version)}
#else
#define KVP__OPTIONS_INIT(type, version) {.struct_size = sizeof(type), .abi_version = (version)}
#endif
/**
 * @def KVP__OPTIONS_INIT(type, version)
 * @brief Internal: the static initialiser of a size-versioned struct with every other field
 *        zero. Uses designated initialisers in C, so `-Wextra` does not warn about the fields left
 *        out.
 */

/** @} */
#endif /* KVPAGES_COMMON_H */
