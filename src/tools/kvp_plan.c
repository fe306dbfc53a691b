/* `kvp plan`: planning numbers for a model shape, before anything is allocated. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_tool.h"

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

const char *kvp_tool_fmt_bytes(int64_t bytes, char *buf, size_t cap) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)bytes;
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    u++;
  }
  if (u == 0) snprintf(buf, cap, "%" PRId64 " B", bytes);
  else snprintf(buf, cap, "%.2f %s", v, units[u]);
  return buf;
}

int kvp_tool_print_plan(const kvp_config *cfg, const char *budget_note) {
  kvp_layout_info li;
  kvp_plan p;
  char b1[32], b2[32], b3[32];
  int i;
  li.struct_size = sizeof li;
  p.struct_size = sizeof p;
  if (kvp_config_get_layout(cfg, &li) != KVP_OK || kvp_config_plan(cfg, &p) != KVP_OK) {
    fprintf(stderr, "kvp: %s\n", kvp_last_error_message());
    return 1;
  }
  printf("model\n");
  printf("  %-34s %" PRId64 "\n", "layers", cfg->num_hidden_layers);
  printf("  %-34s %" PRId64 "\n", "kv heads", cfg->num_kv_heads);
  printf("  %-34s %" PRId64 " (k) / %" PRId64 " (v)\n", "head dim", cfg->k_headdim, cfg->v_headdim);
  printf("  %-34s %" PRId64 "\n", "max model length", cfg->max_model_length);
  printf("  %-34s %s\n", "dtype", kvp_dtype_name(cfg->kvdtype));
  printf("  %-34s %s%s\n", "layout", kvp_layout_name(cfg->version), li.is_h64 ? " (head_dim 64: [K|V] lanes)" : "");
  printf("  %-34s %" PRId64 " tokens\n", "page size", cfg->page_size);
  printf("budget\n");
  printf("  %s\n", budget_note);
  printf("geometry\n");
  printf("  %-34s (", "shape of a layer's pages");
  for (i = 0; i < li.ndim; i++) printf("%s%" PRId64, i ? ", " : "", li.shape[i]);
  printf(")\n");
  printf("  %-34s %" PRId64 "\n", "kv head packing", li.kv_head_packing);
  printf("  %-34s %" PRId64 "\n", "storage combined kv heads", li.storage_num_combined_kv_heads);
  printf("  %-34s %" PRId64 "\n", "storage kv groups", li.storage_num_kv_groups);
  printf("  %-34s %" PRId64 "\n", "storage head dim", li.storage_head_dim);
  printf("  %-34s %" PRId64 "\n", "max pages per request", cfg->max_num_pages_per_req);
  printf("  %-34s %" PRId64 "\n", "update slices per page (v2)", cfg->num_slices_per_kv_cache_update_page);
  printf("plan\n");
  printf("  %-34s %" PRId64 " (%" PRId64 " usable; page 0 is the null page)\n", "pages per layer", p.num_pages,
         p.usable_pages);
  printf("  %-34s %s (reference formula: %s)\n", "bytes per page, all layers",
         kvp_tool_fmt_bytes(p.bytes_per_page, b1, sizeof b1),
         kvp_tool_fmt_bytes(p.reference_bytes_per_page, b2, sizeof b2));
  printf("  %-34s %" PRId64 " B\n", "bytes per token, all layers", p.bytes_per_token);
  printf("  %-34s %s\n", "total cache memory", kvp_tool_fmt_bytes(p.total_bytes, b3, sizeof b3));
  printf("  %-34s %" PRId64 "\n", "tokens that fit", p.token_capacity);
  printf("  %-34s %" PRId64 "\n", "concurrent max-length sequences", p.max_concurrent_seqs);
  printf("  %-34s %" PRId64 "\n", "max sequences (page-table bound)", p.max_num_seqs);
  return 0;
}

static void plan_usage(FILE *f) {
  fprintf(f,
          "usage: kvp plan --layers N --kv-heads N --head-dim N --max-len N [options]\n"
          "\n"
          "  --layers N          transformer layers (required)\n"
          "  --kv-heads N        KV heads per layer (required)\n"
          "  --head-dim N        head dim of K and V (required)\n"
          "  --max-len N         max model length in tokens (required)\n"
          "  --dtype NAME        bf16 (default), fp16, fp32, fp8_e4m3fn, fp8_e5m2 (alias fp8)\n"
          "  --page-size N       tokens per page (default 128)\n"
          "  --layout v2|v3      storage layout (default v3)\n"
          "  --budget BYTES      explicit memory budget, a whole number of bytes >= 1, e.g. 16G,\n"
          "                      1.5G or 1048576 (default: from the device)\n"
          "  --util F            fraction of memory to use, in (0, 1] (default 0.9)\n"
          "  --mode free|total   budget mode (default free, as the reference)\n"
          "  --device cpu|cuda:N device whose memory is budgeted (default cpu)\n"
          "  --reference-budget  size pages with the reference's unpadded formula\n"
          "\n"
          "example: kvp plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 24G\n");
}

/* A CUDA ordinal "N" in [0, INT32_MAX] (kvp_config_options::device_id). Returns NULL on success,
 * else why s is not one. */
static const char *parse_device_id(const char *s, int32_t *out) {
  int64_t id = 0;
  if (strcmp(s, "0") == 0) {
    *out = 0;
    return NULL;
  }
  if (kvp_tool_parse_int(s, &id) != 0 || id > INT32_MAX) return "the device id must be an integer in [0, 2147483647]";
  *out = (int32_t)id;
  return NULL;
}

int kvp_cmd_plan(int argc, char **argv) {
  kvp_config_options o;
  kvp_config cfg;
  char note[160];
  char b[32];
  int i;
  int have_layers = 0, have_heads = 0, have_dim = 0, have_len = 0;
  kvp_config_options_init(&o, sizeof o);
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    const char *reason = NULL; /* why v is invalid, when there is more to say than that */
    int bad = 0;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      plan_usage(stdout);
      return 0;
    }
    if (strcmp(a, "--reference-budget") == 0) {
      o.flags |= KVP_CONFIG_FLAG_REFERENCE_BUDGET;
      continue;
    }
    if (v == NULL) {
      fprintf(stderr, "kvp plan: option '%s' needs a value (or is unknown)\n\n", a);
      plan_usage(stderr);
      return 2;
    }
    i++;
    if (strcmp(a, "--layers") == 0) bad = kvp_tool_parse_int(v, &o.num_hidden_layers), have_layers = 1;
    else if (strcmp(a, "--kv-heads") == 0) bad = kvp_tool_parse_int(v, &o.num_kv_heads), have_heads = 1;
    else if (strcmp(a, "--head-dim") == 0) bad = kvp_tool_parse_int(v, &o.kv_head_dim_size), have_dim = 1;
    else if (strcmp(a, "--max-len") == 0) bad = kvp_tool_parse_int(v, &o.max_model_length), have_len = 1;
    else if (strcmp(a, "--page-size") == 0) bad = kvp_tool_parse_int(v, &o.page_size);
    else if (strcmp(a, "--budget") == 0) reason = kvp_tool_parse_bytes(v, &o.budget_bytes);
    else if (strcmp(a, "--dtype") == 0) bad = kvp_dtype_from_string(v, &o.kvdtype) != KVP_OK;
    else if (strcmp(a, "--layout") == 0) bad = kvp_layout_from_string(v, &o.version) != KVP_OK;
    else if (strcmp(a, "--util") == 0) {
      char *end = NULL;
      o.hbm_utilization = strtod(v, &end);
      bad = *end != '\0' || !(o.hbm_utilization > 0.0 && o.hbm_utilization <= 1.0);
    } else if (strcmp(a, "--mode") == 0) {
      if (strcmp(v, "free") == 0) o.budget_mode = KVP_BUDGET_FREE;
      else if (strcmp(v, "total") == 0) o.budget_mode = KVP_BUDGET_TOTAL;
      else bad = 1;
    } else if (strcmp(a, "--device") == 0) {
      if (strcmp(v, "cpu") == 0) o.device_type = KVP_DEVICE_CPU;
      else if (strncmp(v, "cuda:", 5) == 0) {
        o.device_type = KVP_DEVICE_CUDA;
        reason = parse_device_id(v + 5, &o.device_id);
      } else bad = 1;
    } else {
      fprintf(stderr, "kvp plan: unknown option '%s'\n\n", a);
      plan_usage(stderr);
      return 2;
    }
    if (bad || reason != NULL) {
      fprintf(stderr, "kvp plan: invalid value '%s' for %s%s%s\n", v, a, reason != NULL ? ": " : "",
              reason != NULL ? reason : "");
      return 2;
    }
  }
  if (!have_layers || !have_heads || !have_dim || !have_len) {
    fprintf(stderr, "kvp plan: --layers, --kv-heads, --head-dim and --max-len are required\n\n");
    plan_usage(stderr);
    return 2;
  }
  if (kvp_config_create(&o, &cfg) != KVP_OK) {
    fprintf(stderr, "kvp plan: %s\n", kvp_last_error_message());
    return 1;
  }
  if (o.budget_bytes > 0)
    snprintf(note, sizeof note, "explicit budget %s", kvp_tool_fmt_bytes(o.budget_bytes, b, sizeof b));
  else
    snprintf(note, sizeof note, "from %s memory, mode %s, utilization %.2f, safety margin 256 MiB",
             o.device_type == KVP_DEVICE_CUDA ? "CUDA device" : "host", o.budget_mode == KVP_BUDGET_TOTAL ? "total" : "free",
             cfg.hbm_utilization);
  if (o.flags & KVP_CONFIG_FLAG_REFERENCE_BUDGET)
    strncat(note, "; pages sized with the reference's unpadded formula", sizeof note - strlen(note) - 1);
  return kvp_tool_print_plan(&cfg, note);
}

int kvp_tool_config_for_pages(kvp_config *cfg, int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t max_len,
                              int64_t page_size, kvp_dtype dtype, kvp_layout layout, int64_t pages) {
  kvp_config probe;
  kvp_config_options o;
  kvp_layout_info li;
  /* The true (padded) page size of the shape, from a probe config. */
  if (kvp_config_init(&probe, sizeof probe) != KVP_OK) return 1;
  probe.num_hidden_layers = layers;
  probe.num_kv_heads = kv_heads;
  probe.k_headdim = probe.v_headdim = head_dim;
  probe.max_model_length = max_len;
  probe.page_size = page_size;
  probe.kvdtype = dtype;
  probe.version = layout;
  li.struct_size = sizeof li;
  if (kvp_config_get_layout(&probe, &li) != KVP_OK) return 1;
  if (kvp_config_options_init(&o, sizeof o) != KVP_OK) return 1;
  o.num_hidden_layers = layers;
  o.num_kv_heads = kv_heads;
  o.kv_head_dim_size = head_dim;
  o.max_model_length = max_len;
  o.page_size = page_size;
  o.kvdtype = dtype;
  o.version = layout;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  o.budget_bytes = li.page_bytes_per_layer * layers * pages;
  return kvp_config_create(&o, cfg) == KVP_OK ? 0 : 1;
}

kvp_tensor kvp_tool_host_tensor(void *data, kvp_dtype dtype, int64_t T, int64_t H, int64_t D) {
  kvp_tensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.dtype = dtype;
  t.ndim = 3;
  t.shape[0] = T;
  t.shape[1] = H;
  t.shape[2] = D;
  t.strides[0] = H * D;
  t.strides[1] = D;
  t.strides[2] = 1;
  t.device_type = KVP_DEVICE_CPU;
  return t;
}
