/* Shared declarations of the kvp command-line tool. */
#ifndef KVP_TOOL_H
#define KVP_TOOL_H

#include <stdint.h>

#include "kvpages.h"

/* Subcommands; each returns the process exit code (0 ok, 1 failure, 2 usage error). */
int kvp_cmd_plan(int argc, char **argv);
int kvp_cmd_demo(int argc, char **argv);
int kvp_cmd_inspect(int argc, char **argv);
int kvp_cmd_bench(int argc, char **argv);

/* Parses a byte size such as "8G", "512M", "1048576", "80GiB", "1.5G": a finite, whole number of
 * bytes, at least 1. Returns NULL on success, else why s is not one. */
const char *kvp_tool_parse_bytes(const char *s, int64_t *out);
/* Parses a positive decimal integer. Returns 0 on success. */
int kvp_tool_parse_int(const char *s, int64_t *out);
/* Formats bytes as e.g. "16.00 GiB" into buf. */
const char *kvp_tool_fmt_bytes(int64_t bytes, char *buf, size_t cap);
/* Plans a config for a model shape with a budget of exactly `pages` pages (the true padded page
 * size) and no safety margin. Returns 0 on success; otherwise kvp_last_error_message() says why. */
int kvp_tool_config_for_pages(kvp_config *cfg, int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t max_len,
                              int64_t page_size, kvp_dtype dtype, kvp_layout layout, int64_t pages);
/* A contiguous row-major [T, H, D] host tensor descriptor over `data`. */
kvp_tensor kvp_tool_host_tensor(void *data, kvp_dtype dtype, int64_t T, int64_t H, int64_t D);
/* Prints a config's geometry and planning numbers as a table. Returns 0 on success. */
int kvp_tool_print_plan(const kvp_config *cfg, const char *budget_note);

#endif
