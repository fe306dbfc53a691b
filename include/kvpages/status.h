/**
 * @file kvpages/status.h
 * @brief Status codes, their names, the thread-local error message, version queries and the
 *        misuse hook.
 *
 * Every fallible kvpages function returns a ::kvp_status. ::KVP_OK (0) is success; every other
 * value is an error. On failure the library also stores a human-readable message for the calling
 * thread, readable with kvp_last_error_message() or kvp_last_error_copy(); a successful call
 * clears it. Codes are stable forever: new codes are only ever added, never renumbered, and
 * bindings must map unknown codes to a generic error. Codes are grouped by range: 1–63 usage
 * errors, 64–127 resources, 128–191 device, 192–255 serialized format.
 *
 * @defgroup kvp_status Status codes and errors
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_STATUS_H
#define KVPAGES_STATUS_H

#include "kvpages/common.h"

KVP_BEGIN_DECLS

/** Result of every fallible call: ::KVP_OK or one of the `KVP_ERR_*` codes. */
typedef int32_t kvp_status;

/** Success. */
#define KVP_OK 0
/** An argument is NULL where that is not allowed, out of range, or inconsistent. */
#define KVP_ERR_INVALID_ARGUMENT 1
/** A handle is NULL, destroyed, of the wrong kind, or not a kvpages handle. */
#define KVP_ERR_INVALID_HANDLE 2
/** A name (dtype, layout version) is not known. */
#define KVP_ERR_NOT_FOUND 3
/** An options struct has an unknown size or version, or the header and library majors differ. */
#define KVP_ERR_VERSION_MISMATCH 4
/** The request is valid but not supported by this build, device or dtype. */
#define KVP_ERR_UNSUPPORTED 5
/** A caller buffer is too small; the required size is returned through the size output. */
#define KVP_ERR_BUFFER_TOO_SMALL 6
/** Host memory could not be allocated. Nothing was leaked and nothing changed. */
#define KVP_ERR_OUT_OF_MEMORY 64
/** The page pool has too few free pages for the request. */
#define KVP_ERR_OUT_OF_PAGES 65
/** A file or stream operation failed (open, read, write, fsync, rename, callback). */
#define KVP_ERR_IO 66
/** A CUDA call failed. */
#define KVP_ERR_DEVICE 128
/** The cache hit a sticky device fault or a device-side validation error; see kvp_cache_get_async_error(). */
#define KVP_ERR_DEVICE_LOST 129
/** The requested device does not exist, or the library was built without its backend. */
#define KVP_ERR_NO_DEVICE 130
/** Device memory could not be allocated. */
#define KVP_ERR_DEVICE_OUT_OF_MEMORY 131
/** Serialized data does not start with the kvpages magic. */
#define KVP_ERR_FORMAT_MAGIC 192
/** Serialized data has a format major version this library cannot read, or unknown required flags. */
#define KVP_ERR_FORMAT_VERSION 193
/** Serialized data ends before its declared size. */
#define KVP_ERR_FORMAT_TRUNCATED 194
/** A checksum of serialized data does not match. */
#define KVP_ERR_FORMAT_CHECKSUM 195
/** Serialized data is structurally invalid (absurd sizes, bad field values). */
#define KVP_ERR_FORMAT_CORRUPT 196
/** Serialized data is valid but does not match the target cache (geometry, dtype, layout). */
#define KVP_ERR_FORMAT_MISMATCH 197
/** An internal invariant failed or an unexpected exception was caught; please report it. */
#define KVP_ERR_INTERNAL 255

/**
 * @brief Returns the static name of a status code, e.g. "KVP_ERR_INVALID_ARGUMENT".
 *
 * @param[in] status Any value.
 * @return A static string, never NULL; "KVP_ERR_UNKNOWN" for codes this library does not know.
 * @ownership The string is static; do not free it.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API const char *KVP_CALL kvp_status_name(kvp_status status);

/**
 * @brief Returns the detail message of the last failed kvpages call on this thread.
 *
 * Every kvpages call that returns an error sets the message; every call that succeeds clears it
 * on entry. Read it on the same OS thread, immediately after the failing call (Go callers must
 * hold `runtime.LockOSThread`).
 *
 * @return A NUL-terminated string, never NULL; empty when the last call succeeded.
 * @ownership Owned by the library; valid until the next kvpages call on the same thread.
 * @threadsafety Thread-safe; the message is per thread.
 * @since 1.0
 */
KVP_API const char *KVP_CALL kvp_last_error_message(void);

/**
 * @brief Copies the last error message of this thread into a caller buffer (snprintf-style).
 *
 * Writes at most `cap` bytes including the terminating NUL (nothing when `cap` is 0 or `buf` is
 * NULL) and returns the length of the whole message, excluding the NUL. This call does not clear
 * the message.
 *
 * @param[out] buf Destination, may be NULL when `cap` is 0.
 * @param[in] cap Capacity of `buf` in bytes.
 * @return The full message length in bytes (excluding the NUL).
 * @ownership `buf` is borrowed.
 * @threadsafety Thread-safe; the message is per thread.
 * @since 1.0
 */
KVP_API size_t KVP_CALL kvp_last_error_copy(char *buf, size_t cap);

/**
 * @brief Callback invoked on every detected API misuse (bad handle) before the error returns.
 *
 * @param what A short description of the misuse, e.g. "kvp_cache_destroy: destroyed handle".
 * @param user_data The pointer given to kvp_set_misuse_handler().
 * @warning The callback must not unwind (no C++ exception, Rust panic or longjmp through it).
 */
typedef void(KVP_CALL *kvp_misuse_fn)(const char *what, void *user_data);

/**
 * @brief Installs a process-wide misuse handler; NULL restores the default (no-op).
 *
 * @param[in] fn Handler or NULL.
 * @param[in] user_data Passed to every call of `fn`; may be NULL.
 * @threadsafety Thread-safe, but install it before other threads use the library.
 * @since 1.0
 */
KVP_API void KVP_CALL kvp_set_misuse_handler(kvp_misuse_fn fn, void *user_data);

/**
 * @brief Returns the runtime library version as MAJOR*10000 + MINOR*100 + PATCH.
 * @return The version number of the loaded library (compare with ::KVP_VERSION_NUMBER).
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API uint32_t KVP_CALL kvp_version_number(void);

/**
 * @brief Returns the runtime library version as "MAJOR.MINOR.PATCH".
 * @return A static string, never NULL.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API const char *KVP_CALL kvp_version_string(void);

/**
 * @brief Returns a description of the build: version, git revision, compiler, backends, and the
 * instruction-set level the CPU backend's dtype conversions use on this machine.
 * @return A string that lives as long as the process, never NULL, e.g. "kvpages 1.0.0 (abc1234)
 *         GNU-12.2.0 cuda=on openmp=on api_armor=on cpu=avx2" (`cpu=` is `baseline`, `avx2` or
 *         `avx512`, chosen once per process from the CPU; the environment variable
 *         `KVP_CPU_ISA` can lower it).
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API const char *KVP_CALL kvp_build_info(void);

/**
 * @brief Checks that the headers a caller was compiled with are compatible with this library.
 *
 * Pass ::KVP_VERSION_NUMBER. The library and header are compatible when their major versions are
 * equal and the library is not older than the header (a newer header may declare functions the
 * library lacks).
 *
 * @param[in] header_version_number The caller's ::KVP_VERSION_NUMBER.
 * @retval KVP_OK Compatible.
 * @retval KVP_ERR_VERSION_MISMATCH Different major, or the library is older than the header.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_check_abi(uint32_t header_version_number);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_STATUS_H */
