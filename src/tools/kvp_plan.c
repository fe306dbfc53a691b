/* `kvp plan`: planning numbers for a model shape, before anything is allocated. The shape comes
 * from flags or from a Hugging Face config.json (--hf); the output is a table or one JSON object
 * (--json). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_tool.h"

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

/* What `kvp plan` computed, for either output. */
typedef struct plan_report {
  kvp_config cfg;
  kvp_layout_info li;
  kvp_plan p;
  const kvp_config_options *o;
  const char *hf_path; /* NULL: the shape came from flags */
  const char *budget_note;
} plan_report;

static int plan_compute(plan_report *r) {
  r->li.struct_size = sizeof r->li;
  r->p.struct_size = sizeof r->p;
  if (kvp_config_get_layout(&r->cfg, &r->li) != KVP_OK || kvp_config_plan(&r->cfg, &r->p) != KVP_OK) {
    fprintf(stderr, "kvp: %s\n", kvp_last_error_message());
    return 1;
  }
  return 0;
}

static void print_text(const plan_report *r) {
  const kvp_config *cfg = &r->cfg;
  const kvp_layout_info *li = &r->li;
  const kvp_plan *p = &r->p;
  char b1[32], b2[32], b3[32];
  int i;
  printf("model\n");
  if (r->hf_path != NULL) printf("  %-34s Hugging Face config %s\n", "source", r->hf_path);
  printf("  %-34s %" PRId64 "\n", "layers", cfg->num_hidden_layers);
  printf("  %-34s %" PRId64 "\n", "kv heads", cfg->num_kv_heads);
  printf("  %-34s %" PRId64 " (k) / %" PRId64 " (v)\n", "head dim", cfg->k_headdim, cfg->v_headdim);
  printf("  %-34s %" PRId64 "\n", "max model length", cfg->max_model_length);
  printf("  %-34s %s\n", "dtype", kvp_dtype_name(cfg->kvdtype));
  printf("  %-34s %s%s\n", "layout", kvp_layout_name(cfg->version), li->is_h64 ? " (head_dim 64: [K|V] lanes)" : "");
  printf("  %-34s %" PRId64 " tokens\n", "page size", cfg->page_size);
  printf("budget\n");
  printf("  %s\n", r->budget_note);
  printf("geometry\n");
  printf("  %-34s (", "shape of a layer's pages");
  for (i = 0; i < li->ndim; i++) printf("%s%" PRId64, i ? ", " : "", li->shape[i]);
  printf(")\n");
  printf("  %-34s %" PRId64 "\n", "kv head packing", li->kv_head_packing);
  printf("  %-34s %" PRId64 "\n", "storage combined kv heads", li->storage_num_combined_kv_heads);
  printf("  %-34s %" PRId64 "\n", "storage kv groups", li->storage_num_kv_groups);
  printf("  %-34s %" PRId64 "\n", "storage head dim", li->storage_head_dim);
  printf("  %-34s %" PRId64 "\n", "max pages per request", cfg->max_num_pages_per_req);
  printf("  %-34s %" PRId64 "\n", "update slices per page (v2)", cfg->num_slices_per_kv_cache_update_page);
  printf("sharding\n");
  printf("  %-34s %" PRId64 " (%" PRId64 " asked)\n", "kv-head shards (tensor parallel)", p->kv_head_shards,
         p->requested_kv_head_shards);
  printf("  %-34s %" PRId64 "\n", "page shards (data parallel)", p->data_parallel_size);
  printf("  %-34s %s\n", "resolution", p->sharding_message);
  printf("  %-34s %" PRId64 " x %" PRId64 " = %" PRId64 "\n", "devices (tp x dp)", p->requested_kv_head_shards,
         p->data_parallel_size, p->requested_kv_head_shards * p->data_parallel_size);
  printf("  %-34s %" PRId64 " %s of every page\n", "per device: kv heads held", p->units_per_device,
         cfg->version == KVP_LAYOUT_V2 ? "combined heads" : "storage groups");
  printf("  %-34s %" PRId64 "\n", "per device: pages", p->pages_per_device);
  printf("  %-34s %s\n", "per device: memory", kvp_tool_fmt_bytes(p->bytes_per_device, b3, sizeof b3));
  printf("plan\n");
  printf("  %-34s %" PRId64 " (%" PRId64 " usable; page 0 is the null page)\n", "pages per layer", p->num_pages,
         p->usable_pages);
  printf("  %-34s %s (reference formula: %s)\n", "bytes per page, all layers",
         kvp_tool_fmt_bytes(p->bytes_per_page, b1, sizeof b1),
         kvp_tool_fmt_bytes(p->reference_bytes_per_page, b2, sizeof b2));
  printf("  %-34s %" PRId64 " B\n", "bytes per token, all layers", p->bytes_per_token);
  printf("  %-34s %s\n", "total cache memory", kvp_tool_fmt_bytes(p->total_bytes, b3, sizeof b3));
  printf("  %-34s %" PRId64 "\n", "tokens that fit", p->token_capacity);
  printf("  %-34s %" PRId64 "\n", "concurrent max-length sequences", p->max_concurrent_seqs);
  printf("  %-34s %" PRId64 "\n", "max sequences (page-table bound)", p->max_num_seqs);
}

static const char *head_sharding_name(uint32_t kind) {
  switch (kind) {
    case KVP_HEAD_SHARDING_KEEP: return "keep";
    case KVP_HEAD_SHARDING_UPCAST: return "upcast";
    case KVP_HEAD_SHARDING_REPLICATE: return "replicate";
    default: return "none";
  }
}

/* The JSON output: one object, field names documented in docs/kvp-tool.md. */
static void print_json(const plan_report *r) {
  const kvp_config *cfg = &r->cfg;
  const kvp_config_options *o = r->o;
  const kvp_layout_info *li = &r->li;
  const kvp_plan *p = &r->p;
  const int explicit_budget = o->budget_bytes > 0;
  int i;
  printf("{\"command\":\"plan\",\"kvpages_version\":\"%s\",\"source\":\"%s\",\"hf_config\":", kvp_version_string(),
         r->hf_path != NULL ? "hf" : "flags");
  kvp_tool_json_string(stdout, r->hf_path);
  printf(",\"model\":{\"layers\":%" PRId64 ",\"kv_heads\":%" PRId64 ",\"head_dim\":%" PRId64
         ",\"max_model_length\":%" PRId64 ",\"dtype\":\"%s\",\"layout\":\"%s\",\"page_size\":%" PRId64 "}",
         cfg->num_hidden_layers, cfg->num_kv_heads, cfg->k_headdim, cfg->max_model_length, kvp_dtype_name(cfg->kvdtype),
         kvp_layout_name(cfg->version), cfg->page_size);
  printf(",\"budget\":{\"source\":\"%s\",\"bytes\":", explicit_budget ? "explicit" : "device");
  if (explicit_budget) printf("%" PRId64, o->budget_bytes);
  else printf("null");
  if (o->device_type == KVP_DEVICE_CUDA) printf(",\"device\":\"cuda:%d\"", (int)o->device_id);
  else printf(",\"device\":\"cpu\"");
  printf(",\"mode\":\"%s\",\"utilization\":%.6g,\"safety_margin_bytes\":%" PRId64
         ",\"kv_head_shards\":%" PRId64 ",\"reference_formula\":%s}",
         o->budget_mode == KVP_BUDGET_TOTAL ? "total" : "free", cfg->hbm_utilization,
         explicit_budget || (o->flags & KVP_CONFIG_FLAG_NO_SAFETY_MARGIN) ? (int64_t)0 : (int64_t)KVP_DEFAULT_SAFETY_MARGIN,
         o->kv_head_shards > 0 ? o->kv_head_shards : 1, (o->flags & KVP_CONFIG_FLAG_REFERENCE_BUDGET) ? "true" : "false");
  printf(",\"geometry\":{\"page_shape\":[");
  for (i = 0; i < li->ndim; i++) printf("%s%" PRId64, i ? "," : "", li->shape[i]);
  printf("],\"is_h64\":%s,\"kv_head_packing\":%" PRId64 ",\"storage_num_combined_kv_heads\":%" PRId64
         ",\"storage_num_kv_groups\":%" PRId64 ",\"storage_head_dim\":%" PRId64 ",\"itemsize\":%" PRId64
         ",\"page_bytes_per_layer\":%" PRId64 ",\"layer_bytes\":%" PRId64 ",\"max_num_pages_per_req\":%" PRId64
         ",\"num_slices_per_kv_cache_update_page\":%" PRId64 "}",
         li->is_h64 ? "true" : "false", li->kv_head_packing, li->storage_num_combined_kv_heads,
         li->storage_num_kv_groups, li->storage_head_dim, li->itemsize, li->page_bytes_per_layer, li->layer_bytes,
         cfg->max_num_pages_per_req, cfg->num_slices_per_kv_cache_update_page);
  printf(",\"plan\":{\"num_pages\":%" PRId64 ",\"usable_pages\":%" PRId64 ",\"page_size\":%" PRId64
         ",\"bytes_per_page\":%" PRId64 ",\"reference_bytes_per_page\":%" PRId64 ",\"bytes_per_token\":%" PRId64
         ",\"total_bytes\":%" PRId64 ",\"token_capacity\":%" PRId64 ",\"max_concurrent_seqs\":%" PRId64
         ",\"max_num_seqs\":%" PRId64 "}",
         p->num_pages, p->usable_pages, p->page_size, p->bytes_per_page, p->reference_bytes_per_page,
         p->bytes_per_token, p->total_bytes, p->token_capacity, p->max_concurrent_seqs, p->max_num_seqs);
  printf(",\"sharding\":{\"kv_head_shards\":%" PRId64 ",\"requested_kv_head_shards\":%" PRId64
         ",\"data_parallel_size\":%" PRId64 ",\"resolution\":\"%s\",\"requested_dtype\":\"%s\",\"dtype\":\"%s\""
         ",\"units_per_device\":%" PRId64 ",\"pages_per_device\":%" PRId64 ",\"bytes_per_device\":%" PRId64
         ",\"message\":",
         p->kv_head_shards, p->requested_kv_head_shards, p->data_parallel_size, head_sharding_name(p->head_sharding),
         kvp_dtype_name(p->requested_kvdtype), kvp_dtype_name(p->kvdtype), p->units_per_device, p->pages_per_device,
         p->bytes_per_device);
  kvp_tool_json_string(stdout, p->sharding_message);
  printf("}");
  printf(",\"config\":");
  kvp_tool_json_config(stdout, cfg);
  printf("}\n");
}

int kvp_tool_print_plan(const kvp_config *cfg, const char *budget_note) {
  plan_report r;
  memset(&r, 0, sizeof r);
  r.cfg = *cfg;
  r.budget_note = budget_note;
  if (plan_compute(&r) != 0) return 1;
  print_text(&r);
  return 0;
}

static void plan_usage(FILE *f) {
  fprintf(f,
          "usage: kvp plan --layers N --kv-heads N --head-dim N --max-len N [options]\n"
          "       kvp plan --hf config.json [options]\n"
          "\n"
          "Prints the geometry and planning numbers of a KV cache for a model shape, before\n"
          "anything is allocated. Options take their value as --opt VALUE or --opt=VALUE.\n"
          "\n"
          "model shape (from flags, or from a Hugging Face config; a flag overrides the config):\n"
          "  --layers N          transformer layers\n"
          "  --kv-heads N        KV heads per layer (all of them, before tensor parallelism)\n"
          "  --head-dim N        head dim of K and V\n"
          "  --max-len N         max model length in tokens\n"
          "  --hf FILE           read the shape from a Hugging Face config.json: num_hidden_layers,\n"
          "                      num_key_value_heads (default num_attention_heads), head_dim (default\n"
          "                      hidden_size / num_attention_heads), max_position_embeddings and\n"
          "                      torch_dtype (bfloat16, float16, float32)\n"
          "  --dtype NAME        " KVP_TOOL_DTYPES "\n"
          "                      (default bf16, or the config's torch_dtype)\n"
          "cache:\n"
          "  --page-size N       tokens per page (default 128)\n"
          "  --layout NAME       " KVP_TOOL_LAYOUTS " (default v3)\n"
          "budget:\n"
          "  --budget BYTES      explicit memory budget per device, a whole number of bytes >= 1,\n"
          "                      e.g. 16G, 1.5G or 1048576 (default: from the device)\n"
          "  --util F            fraction of memory to use, in (0, 1] (default 0.9)\n"
          "  --mode NAME         budget mode: " KVP_TOOL_MODES " (default free, as the reference)\n"
          "  --device NAME       device whose memory is budgeted: " KVP_TOOL_DEVICES "\n"
          "                      (default cpu)\n"
          "  --tp N              tensor parallelism: the KV heads are sharded over N devices, each\n"
          "                      with the budget; when N does not split them the dtype is upcast\n"
          "                      (bf16, then fp32) or the heads are replicated (default 1)\n"
          "  --dp N              data parallelism: the pages are sharded over N devices, each with\n"
          "                      the budget; pages are a multiple of N (default 1)\n"
          "  --reference-budget  size pages with the reference's unpadded formula\n"
          "output:\n"
          "  --json              print one JSON object (fields: docs/kvp-tool.md)\n"
          "\n"
          "examples:\n"
          "  kvp plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 24G\n"
          "  kvp plan --hf Meta-Llama-3-8B/config.json --budget=70G --tp=2 --json\n"
          "  kvp plan --layers 80 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 60G --tp 4 --dp 2\n");
}

static const kvp_tool_opt plan_opts[] = {
    {"--layers", "N"},      {"--kv-heads", "N"},   {"--head-dim", "N"},          {"--max-len", "N"},
    {"--hf", "FILE"},       {"--dtype", "NAME"},   {"--page-size", "N"},         {"--layout", "NAME"},
    {"--budget", "BYTES"},  {"--util", "F"},       {"--mode", "NAME"},           {"--device", "NAME"},
    {"--tp", "N"},          {"--dp", "N"},         {"--json", NULL},             {"--reference-budget", NULL},
    {NULL, NULL}};

typedef struct plan_args {
  kvp_config_options o;
  kvp_tool_shape shape; /* from the flags; 0 = not given */
  const char *hf_path;
  int json;
} plan_args;

/* One option's value into pa. Returns NULL when valid, else why not (a message for the user). */
static const char *plan_option(plan_args *pa, const kvp_tool_opt *opt, const char *v) {
  kvp_config_options *o = &pa->o;
  const char *want_int = "expected a positive integer";
  if (kvp_tool_is(opt, "--layers")) return kvp_tool_parse_int(v, &pa->shape.layers) ? want_int : NULL;
  if (kvp_tool_is(opt, "--kv-heads")) return kvp_tool_parse_int(v, &pa->shape.kv_heads) ? want_int : NULL;
  if (kvp_tool_is(opt, "--head-dim")) return kvp_tool_parse_int(v, &pa->shape.head_dim) ? want_int : NULL;
  if (kvp_tool_is(opt, "--max-len")) return kvp_tool_parse_int(v, &pa->shape.max_len) ? want_int : NULL;
  if (kvp_tool_is(opt, "--page-size")) return kvp_tool_parse_int(v, &o->page_size) ? want_int : NULL;
  if (kvp_tool_is(opt, "--tp")) return kvp_tool_parse_int(v, &o->kv_head_shards) ? want_int : NULL;
  if (kvp_tool_is(opt, "--dp")) return kvp_tool_parse_int(v, &o->data_parallel_size) ? want_int : NULL;
  if (kvp_tool_is(opt, "--budget")) return kvp_tool_parse_bytes(v, &o->budget_bytes);
  if (kvp_tool_is(opt, "--dtype"))
    return kvp_tool_parse_dtype(v, &pa->shape.dtype) ? "valid values are " KVP_TOOL_DTYPES : NULL;
  if (kvp_tool_is(opt, "--layout"))
    return kvp_layout_from_string(v, &o->version) != KVP_OK ? "valid values are " KVP_TOOL_LAYOUTS : NULL;
  if (kvp_tool_is(opt, "--device")) return kvp_tool_parse_device(v, &o->device_type, &o->device_id);
  if (kvp_tool_is(opt, "--hf")) return pa->hf_path = v, NULL;
  if (kvp_tool_is(opt, "--util")) {
    char *end = NULL;
    o->hbm_utilization = strtod(v, &end);
    return *end != '\0' || end == v || !(o->hbm_utilization > 0.0 && o->hbm_utilization <= 1.0)
               ? "expected a fraction in (0, 1]"
               : NULL;
  }
  if (kvp_tool_is(opt, "--mode")) {
    if (strcmp(v, "free") == 0) o->budget_mode = KVP_BUDGET_FREE;
    else if (strcmp(v, "total") == 0) o->budget_mode = KVP_BUDGET_TOTAL;
    else return "valid values are " KVP_TOOL_MODES;
    return NULL;
  }
  return "unhandled option"; /* not reached: every option of plan_opts is handled above */
}

/* Returns -1 to go on, otherwise the exit code. */
static int parse_plan_args(int argc, char **argv, plan_args *pa) {
  kvp_tool_args a;
  const kvp_tool_opt *opt;
  const char *v;
  int r;
  kvp_tool_args_init(&a, argc, argv, "kvp plan", plan_opts);
  while ((r = kvp_tool_next_arg(&a, &opt, &v)) != KVP_TOOL_ARG_END) {
    const char *why;
    if (r == KVP_TOOL_ARG_HELP) return plan_usage(stdout), 0;
    if (r == KVP_TOOL_ARG_ERROR) return 2;
    if (r == KVP_TOOL_ARG_POSITIONAL) {
      fprintf(stderr, "kvp plan: unexpected argument '%s' (the shape is given with options)\n\n", v);
      plan_usage(stderr);
      return 2;
    }
    if (kvp_tool_is(opt, "--json")) pa->json = 1;
    else if (kvp_tool_is(opt, "--reference-budget")) pa->o.flags |= KVP_CONFIG_FLAG_REFERENCE_BUDGET;
    else if ((why = plan_option(pa, opt, v)) != NULL) return kvp_tool_bad_value("kvp plan", opt->name, v, why);
  }
  return -1;
}

/* The model shape: the Hugging Face config's, with every flag given overriding it. Returns -1 to
 * go on, otherwise the exit code. */
static int resolve_shape(plan_args *pa) {
  kvp_tool_shape s = {0, 0, 0, 0, KVP_DTYPE_INVALID};
  kvp_config_options *o = &pa->o;
  char err[512];
  if (pa->hf_path != NULL && kvp_tool_read_hf_config(pa->hf_path, &s, err, sizeof err) != 0) {
    fprintf(stderr, "kvp plan: --hf %s\n", err);
    return 1;
  }
  o->num_hidden_layers = pa->shape.layers ? pa->shape.layers : s.layers;
  o->num_kv_heads = pa->shape.kv_heads ? pa->shape.kv_heads : s.kv_heads;
  o->kv_head_dim_size = pa->shape.head_dim ? pa->shape.head_dim : s.head_dim;
  o->max_model_length = pa->shape.max_len ? pa->shape.max_len : s.max_len;
  o->kvdtype = pa->shape.dtype != KVP_DTYPE_INVALID ? pa->shape.dtype : s.dtype;
  if (!o->num_hidden_layers || !o->num_kv_heads || !o->kv_head_dim_size || !o->max_model_length) {
    fprintf(stderr, "kvp plan: --layers, --kv-heads, --head-dim and --max-len are required (or --hf FILE)\n\n");
    plan_usage(stderr);
    return 2;
  }
  return -1;
}

static void budget_note(const kvp_config_options *o, const kvp_config *cfg, char *note, size_t cap) {
  char b[32];
  size_t n;
  if (o->budget_bytes > 0)
    snprintf(note, cap, "explicit budget %s", kvp_tool_fmt_bytes(o->budget_bytes, b, sizeof b));
  else
    snprintf(note, cap, "from %s memory, mode %s, utilization %.2f, safety margin 256 MiB",
             o->device_type == KVP_DEVICE_CUDA ? "CUDA device" : "host",
             o->budget_mode == KVP_BUDGET_TOTAL ? "total" : "free", cfg->hbm_utilization);
  n = strlen(note);
  if (cfg->kv_head_shards > 1 && cfg->num_kv_heads % cfg->kv_head_shards == 0)
    n += (size_t)snprintf(note + n, cap - n, "; KV heads sharded over %" PRId64 " devices (%" PRId64
                          " per device), each with this budget",
                          cfg->kv_head_shards, cfg->num_kv_heads / cfg->kv_head_shards);
  else if (cfg->kv_head_shards > 1)
    n += (size_t)snprintf(note + n, cap - n, "; KV heads sharded over %" PRId64 " devices, each with this budget",
                          cfg->kv_head_shards);
  if (n < cap && cfg->data_parallel_size > 1)
    n += (size_t)snprintf(note + n, cap - n, "; pages sharded over %" PRId64 " devices, each with this budget",
                          cfg->data_parallel_size);
  if (n < cap && (o->flags & KVP_CONFIG_FLAG_REFERENCE_BUDGET))
    snprintf(note + n, cap - n, "; pages sized with the reference's unpadded formula");
}

int kvp_cmd_plan(int argc, char **argv) {
  plan_args pa;
  plan_report r;
  char note[320];
  int rc;
  memset(&pa, 0, sizeof pa);
  memset(&r, 0, sizeof r);
  kvp_config_options_init(&pa.o, sizeof pa.o);
  if ((rc = parse_plan_args(argc, argv, &pa)) >= 0) return rc;
  if ((rc = resolve_shape(&pa)) >= 0) return rc;
  if (kvp_config_create(&pa.o, &r.cfg) != KVP_OK) {
    fprintf(stderr, "kvp plan: %s\n", kvp_last_error_message());
    return 1;
  }
  budget_note(&pa.o, &r.cfg, note, sizeof note);
  r.o = &pa.o;
  r.hf_path = pa.hf_path;
  r.budget_note = note;
  if (plan_compute(&r) != 0) return 1;
  if (pa.json) print_json(&r);
  else print_text(&r);
  return 0;
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
