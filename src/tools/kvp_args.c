/* Command-line parsing shared by the kvp subcommands: `--opt value` and `--opt=value`, and
 * messages that name the bad option and list what is valid. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_tool.h"

void kvp_tool_args_init(kvp_tool_args *a, int argc, char **argv, const char *cmd, const kvp_tool_opt *opts) {
  a->argc = argc;
  a->argv = argv;
  a->i = 1; /* argv[0] is the subcommand's name */
  a->cmd = cmd;
  a->opts = opts;
}

int kvp_tool_is(const kvp_tool_opt *opt, const char *name) { return opt != NULL && strcmp(opt->name, name) == 0; }

static const kvp_tool_opt *find_opt(const kvp_tool_opt *opts, const char *name, size_t len) {
  for (; opts->name != NULL; ++opts)
    if (strlen(opts->name) == len && strncmp(opts->name, name, len) == 0) return opts;
  return NULL;
}

static void list_options(FILE *f, const kvp_tool_opt *opts) {
  const char *sep = "";
  for (; opts->name != NULL; ++opts, sep = ", ") fprintf(f, "%s%s", sep, opts->name);
  fprintf(f, "%s--help", sep);
}

int kvp_tool_next_arg(kvp_tool_args *a, const kvp_tool_opt **opt, const char **value) {
  const char *arg, *eq;
  size_t name_len;
  *opt = NULL;
  *value = NULL;
  if (a->i >= a->argc) return KVP_TOOL_ARG_END;
  arg = a->argv[a->i++];
  if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) return KVP_TOOL_ARG_HELP;
  if (arg[0] != '-' || arg[1] == '\0') {
    *value = arg;
    return KVP_TOOL_ARG_POSITIONAL;
  }
  eq = strchr(arg, '=');
  name_len = eq != NULL ? (size_t)(eq - arg) : strlen(arg);
  *opt = find_opt(a->opts, arg, name_len);
  if (*opt == NULL) {
    fprintf(stderr, "%s: unknown option '%.*s' (valid options: ", a->cmd, (int)name_len, arg);
    list_options(stderr, a->opts);
    fprintf(stderr, ")\n");
    return KVP_TOOL_ARG_ERROR;
  }
  if ((*opt)->metavar == NULL) {
    if (eq != NULL) {
      fprintf(stderr, "%s: option '%s' takes no value (got '%s')\n", a->cmd, (*opt)->name, eq + 1);
      return KVP_TOOL_ARG_ERROR;
    }
    return KVP_TOOL_ARG_OPTION;
  }
  if (eq != NULL) {
    *value = eq + 1;
  } else if (a->i < a->argc) {
    *value = a->argv[a->i++];
  } else {
    fprintf(stderr, "%s: option '%s' needs a value (%s %s)\n", a->cmd, (*opt)->name, (*opt)->name, (*opt)->metavar);
    return KVP_TOOL_ARG_ERROR;
  }
  return KVP_TOOL_ARG_OPTION;
}

int kvp_tool_bad_value(const char *cmd, const char *option, const char *value, const char *why) {
  fprintf(stderr, "%s: invalid value '%s' for %s: %s\n", cmd, value, option, why);
  return 2;
}

int kvp_tool_parse_int(const char *s, int64_t *out) {
  char *end = NULL;
  long long v;
  if (s == NULL || *s == '\0') return -1;
  errno = 0;
  v = strtoll(s, &end, 10);
  if (errno != 0 || *end != '\0' || v <= 0) return -1;
  *out = (int64_t)v;
  return 0;
}

const char *kvp_tool_parse_bytes(const char *s, int64_t *out) {
  char *end = NULL;
  double v;
  double mul = 1.0;
  if (s == NULL || *s == '\0') return "empty";
  errno = 0;
  v = strtod(s, &end);
  if (end == s) return "not a number";
  if (!isfinite(v)) return "not a finite number";
  if (*end != '\0') {
    char u = *end;
    const char *rest = end + 1;
    if (u == 'k' || u == 'K') mul = 1024.0;
    else if (u == 'm' || u == 'M') mul = 1024.0 * 1024.0;
    else if (u == 'g' || u == 'G') mul = 1024.0 * 1024.0 * 1024.0;
    else if (u == 't' || u == 'T') mul = 1024.0 * 1024.0 * 1024.0 * 1024.0;
    else return "unknown unit (use K, M, G or T)";
    if (strcmp(rest, "") != 0 && strcmp(rest, "B") != 0 && strcmp(rest, "iB") != 0 && strcmp(rest, "ib") != 0)
      return "unknown unit (use K, M, G or T)";
  }
  v *= mul;
  if (v < 1.0) return "less than one byte";
  if (v != floor(v)) return "not a whole number of bytes";
  if (v >= 9.2e18) return "too large";
  *out = (int64_t)v;
  return NULL;
}

int kvp_tool_parse_dtype(const char *s, kvp_dtype *out) {
  kvp_dtype d;
  if (kvp_dtype_from_string(s, &d) != KVP_OK) return -1;
  /* fp64 and the fnuz fp8 types are names the library knows but cannot store. */
  if (d != KVP_DTYPE_BF16 && d != KVP_DTYPE_F16 && d != KVP_DTYPE_F32 && d != KVP_DTYPE_F8_E4M3FN &&
      d != KVP_DTYPE_F8_E5M2)
    return -1;
  *out = d;
  return 0;
}

const char *kvp_tool_parse_device(const char *s, kvp_device_type *type, int32_t *id) {
  int64_t n = 0;
  if (strcmp(s, "cpu") == 0) {
    *type = KVP_DEVICE_CPU;
    *id = 0;
    return NULL;
  }
  if (strncmp(s, "cuda:", 5) != 0) return "valid values are " KVP_TOOL_DEVICES;
  if (strcmp(s + 5, "0") != 0 && (kvp_tool_parse_int(s + 5, &n) != 0 || n > INT32_MAX))
    return "the device id must be an integer in [0, 2147483647]";
  *type = KVP_DEVICE_CUDA;
  *id = (int32_t)n;
  return NULL;
}

int kvp_tool_parse_progress(const char *s, kvp_progress_mode *out) {
  if (strcmp(s, "auto") == 0) *out = KVP_PROGRESS_AUTO;
  else if (strcmp(s, "always") == 0) *out = KVP_PROGRESS_ALWAYS;
  else if (strcmp(s, "never") == 0) *out = KVP_PROGRESS_NEVER;
  else return -1;
  return 0;
}

void kvp_tool_json_string(FILE *f, const char *s) {
  if (s == NULL) {
    fputs("null", f);
    return;
  }
  fputc('"', f);
  for (; *s != '\0'; ++s) {
    const unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c == '\n') fputs("\\n", f);
    else if (c == '\t') fputs("\\t", f);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

void kvp_tool_json_config(FILE *f, const kvp_config *cfg) {
  char buf[1024];
  size_t n = 0;
  if (kvp_config_to_json(cfg, buf, sizeof buf, &n) == KVP_OK) fputs(buf, f);
  else fputs("null", f);
}
