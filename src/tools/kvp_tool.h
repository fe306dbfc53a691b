/* Shared declarations of the kvp command-line tool. */
#ifndef KVP_TOOL_H
#define KVP_TOOL_H

#include <stdint.h>
#include <stdio.h>

#include "kvpages.h"

/* Subcommands; each returns the process exit code (0 ok, 1 failure, 2 usage error). */
int kvp_cmd_plan(int argc, char **argv);
int kvp_cmd_demo(int argc, char **argv);
int kvp_cmd_inspect(int argc, char **argv);
int kvp_cmd_load(int argc, char **argv);
int kvp_cmd_bench(int argc, char **argv);
int kvp_cmd_store(int argc, char **argv);

/* ---- Block stores (kvp_store.c) ---------------------------------------------------------------- */

/* Opens the store SPEC names: a directory (kvp_store_create_directory(), bounded by max_bytes, 0 =
 * unbounded; with create 0 a missing directory is an error, not created) or a redis:// or
 * redis+cluster:// URL. Returns 0 with *out set, or the exit status (1 the store cannot be
 * opened, 2 SPEC is no store) after printing why on stderr with the prefix cmd. */
int kvp_tool_open_store(const char *cmd, const char *spec, uint64_t max_bytes, int create, kvp_store **out);

/* ---- Command-line parsing (kvp_args.c) ------------------------------------------------------ */

/* The valid values of the enumerated options, as every error message lists them. */
#define KVP_TOOL_DTYPES "bf16, fp16, fp32, fp8_e4m3fn, fp8_e5m2 (also bfloat16, float16, float32, fp8 = fp8_e5m2)"
#define KVP_TOOL_LAYOUTS "v2, v3"
#define KVP_TOOL_DEVICES "cpu, cuda:N (N a CUDA device ordinal, e.g. cuda:0)"
#define KVP_TOOL_MODES "free, total"
#define KVP_TOOL_PROGRESS "auto, always, never"

/* One option of a subcommand: its name ("--layers") and, for an option that takes a value, the
 * value's name in messages ("N"); NULL for a flag. A table ends with a NULL name. */
typedef struct kvp_tool_opt {
  const char *name;
  const char *metavar;
} kvp_tool_opt;

/* A walk over a subcommand's arguments. Accepts `--opt value` and `--opt=value`. */
typedef struct kvp_tool_args {
  int argc, i;
  char **argv;
  const char *cmd;          /* "kvp plan", the prefix of every message */
  const kvp_tool_opt *opts; /* the subcommand's options */
} kvp_tool_args;

/* What kvp_tool_next_arg() found. */
enum {
  KVP_TOOL_ARG_END = 0,   /* no more arguments */
  KVP_TOOL_ARG_OPTION,    /* *opt (and *value for an option with a value) set */
  KVP_TOOL_ARG_POSITIONAL, /* *value set */
  KVP_TOOL_ARG_HELP,      /* --help or -h */
  KVP_TOOL_ARG_ERROR      /* the message is printed: exit with status 2 */
};

void kvp_tool_args_init(kvp_tool_args *a, int argc, char **argv, const char *cmd, const kvp_tool_opt *opts);
/* The next argument. Errors (unknown option, with the valid ones listed; missing value; a value
 * given to a flag) are printed on stderr. */
int kvp_tool_next_arg(kvp_tool_args *a, const kvp_tool_opt **opt, const char **value);
/* True when opt is the option called name. */
int kvp_tool_is(const kvp_tool_opt *opt, const char *name);
/* Prints "CMD: invalid value 'VALUE' for OPTION: WHY" on stderr; returns 2 (the exit status). */
int kvp_tool_bad_value(const char *cmd, const char *option, const char *value, const char *why);

/* Parses a positive decimal integer. Returns 0 on success. */
int kvp_tool_parse_int(const char *s, int64_t *out);
/* Parses a byte size such as "8G", "512M", "1048576", "80GiB", "1.5G": a finite, whole number of
 * bytes, at least 1. Returns NULL on success, else why s is not one. */
const char *kvp_tool_parse_bytes(const char *s, int64_t *out);
/* Parses a storage dtype the cache supports. Returns 0 on success. */
int kvp_tool_parse_dtype(const char *s, kvp_dtype *out);
/* Parses "cpu" or "cuda:N". Returns NULL on success, else why s is not a device. */
const char *kvp_tool_parse_device(const char *s, kvp_device_type *type, int32_t *id);
/* Progress-bar policy of --progress: auto (only when stderr is a terminal), always, never. */
typedef enum { KVP_PROGRESS_AUTO = 0, KVP_PROGRESS_ALWAYS, KVP_PROGRESS_NEVER } kvp_progress_mode;
/* Parses a --progress value. Returns 0 on success. */
int kvp_tool_parse_progress(const char *s, kvp_progress_mode *out);

/* ---- Output helpers --------------------------------------------------------------------------- */

/* Formats bytes as e.g. "16.00 GiB" into buf. */
const char *kvp_tool_fmt_bytes(int64_t bytes, char *buf, size_t cap);
/* Writes s as a JSON string (quoted and escaped), or null when s is NULL. */
void kvp_tool_json_string(FILE *f, const char *s);
/* Writes a config as the reference's JSON (kvp_config_to_json()), or null when that fails. */
void kvp_tool_json_config(FILE *f, const kvp_config *cfg);

/* ---- Progress bar (kvp_progress.c) ------------------------------------------------------------ */

/* A progress bar on stderr for an operation over `total` bytes. Drawn only when enabled:
 * mode always, or mode auto with stderr a terminal and total at least KVP_PROGRESS_MIN_BYTES. */
#define KVP_PROGRESS_MIN_BYTES (32ll << 20)
typedef struct kvp_progress {
  const char *label; /* "saving", "loading", "verifying" */
  uint64_t total, done;
  double started, drawn; /* seconds (monotonic) of the start and of the last draw */
  int enabled;
} kvp_progress;

void kvp_progress_begin(kvp_progress *p, const char *label, uint64_t total, kvp_progress_mode mode);
/* Sets the bytes done so far and redraws (at most ten times a second). */
void kvp_progress_set(kvp_progress *p, uint64_t done);
/* Ends the bar: on success drawn at 100% and ended with a newline, on failure erased. */
void kvp_progress_end(kvp_progress *p, int ok);
/* Seconds on a monotonic clock. */
double kvp_tool_now(void);
/* Which bytes kvp_tool_watch_io() follows. */
typedef enum { KVP_IO_READ = 0, KVP_IO_WRITE } kvp_io_direction;
/* Runs call(arg), moving the bar by the bytes this process reads or writes meanwhile (for the
 * library's file calls, which take no progress callback); returns what call returned. */
kvp_status kvp_tool_watch_io(kvp_progress *p, kvp_io_direction direction, kvp_status (*call)(void *), void *arg);

/* ---- Files with progress (kvp_load.c) --------------------------------------------------------- */

/* Saves a cache (or the pages opts selects; opts may be NULL) to path with kvp_serialize_to_file()
 * (the file replaced atomically), with a progress bar. Returns 0, or 1 after printing why on
 * stderr with the prefix cmd. */
int kvp_tool_save(const char *cmd, const kvp_cache *cache, const kvp_serialize_options *opts, const char *path,
                  kvp_progress_mode mode);

/* ---- Model shapes (kvp_plan.c, kvp_hf.cpp) ---------------------------------------------------- */

/* A model's KV-cache shape. 0 = not given. */
typedef struct kvp_tool_shape {
  int64_t layers, kv_heads, head_dim, max_len;
  kvp_dtype dtype; /* KVP_DTYPE_INVALID = not given */
} kvp_tool_shape;

#ifdef __cplusplus
extern "C" {
#endif
/* Reads the KV-cache shape of a Hugging Face model config (config.json): num_hidden_layers,
 * num_key_value_heads (default num_attention_heads), head_dim (default hidden_size /
 * num_attention_heads), max_position_embeddings and torch_dtype (or dtype): bfloat16, float16 or
 * float32. A config whose text model is nested under "text_config" is read from there. Returns
 * 0, or -1 with why in err (naming the file and the field). */
int kvp_tool_read_hf_config(const char *path, kvp_tool_shape *out, char *err, size_t cap);
#ifdef __cplusplus
}
#endif

/* Plans a config for a model shape with a budget of exactly `pages` pages (the true padded page
 * size) and no safety margin. Returns 0 on success; otherwise kvp_last_error_message() says why. */
int kvp_tool_config_for_pages(kvp_config *cfg, int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t max_len,
                              int64_t page_size, kvp_dtype dtype, kvp_layout layout, int64_t pages);
/* Prints a config's geometry and planning numbers as a table (the text of `kvp plan`). Returns 0
 * on success. */
int kvp_tool_print_plan(const kvp_config *cfg, const char *budget_note);
/* A contiguous row-major [T, H, D] host tensor descriptor over `data`. */
kvp_tensor kvp_tool_host_tensor(void *data, kvp_dtype dtype, int64_t T, int64_t H, int64_t D);

#endif
