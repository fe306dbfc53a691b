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
#if __cplusplus >= 201402L
#define KVP__CONSTEXPR constexpr
#else
#define KVP__CONSTEXPR inline
#endif
extern "C++" {
/* Internal: a T with every field zero except struct_size (C++, where a partial brace list makes
 * -Wextra warn and designated initialisers need C++20). */
template <class T>
KVP__CONSTEXPR T kvp__sized_init() noexcept {
  T t{};
  t.struct_size = static_cast<uint32_t>(sizeof(T));
  return t;
}
template <class T>
KVP__CONSTEXPR T kvp__versioned_init(uint32_t version) noexcept {
  T t = kvp__sized_init<T>();
  t.abi_version = version;
  return t;
}
}
#define KVP__OPTIONS_INIT(type, version) kvp__versioned_init<type>(version)
#define KVP__OUTPUT_INIT(type) kvp__sized_init<type>()
#else
#define KVP__OPTIONS_INIT(type, version) {.struct_size = sizeof(type), .abi_version = (version)}
#define KVP__OUTPUT_INIT(type) {.struct_size = sizeof(type)}
#endif
/**
 * @def KVP__OPTIONS_INIT(type, version)
 * @brief Internal: the initialiser of a size-versioned input struct with every other field zero.
 *        Designated initialisers in C, a constexpr function (C++14; inline in C++11) in C++, so
 *        neither warns under `-Wall -Wextra`.
 */
/**
 * @def KVP__OUTPUT_INIT(type)
 * @brief Internal: the initialiser of an output struct: `struct_size` set, every field zero.
 */

/** @} */
#endif /* KVPAGES_COMMON_H */
