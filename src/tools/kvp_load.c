/* `kvp load FILE`: load a serialized cache into a new CPU cache through the streaming reader
 * (every checksum checked), report what was loaded and how fast, and optionally save it (or a
 * page selection of it) again. Also kvp_tool_save(), the save with a progress bar that
 * `kvp demo --save` uses too. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_tool.h"

/* ---- Save ------------------------------------------------------------------------------------- */

typedef struct save_call {
  const kvp_cache *cache;
  const kvp_serialize_options *opts;
  const char *path;
} save_call;

static kvp_status save_file(void *arg) {
  const save_call *c = (const save_call *)arg;
  return kvp_serialize_to_file(c->cache, c->opts, c->path);
}

int kvp_tool_save(const char *cmd, const kvp_cache *cache, const kvp_serialize_options *opts, const char *path,
                  kvp_progress_mode mode) {
  kvp_progress progress;
  size_t size = 0;
  int rc;
  if (kvp_serialized_size(cache, opts, &size) != KVP_OK) {
    fprintf(stderr, "%s: %s\n", cmd, kvp_last_error_message());
    return 1;
  }
  kvp_progress_begin(&progress, "saving", size, mode);
  {
    save_call call = {cache, opts, path};
    rc = kvp_tool_watch_io(&progress, KVP_IO_WRITE, save_file, &call) == KVP_OK ? 0 : 1;
  }
  kvp_progress_end(&progress, rc == 0);
  if (rc != 0) fprintf(stderr, "%s: saving '%s': %s\n", cmd, path, kvp_last_error_message());
  return rc;
}

/* ---- Load ------------------------------------------------------------------------------------- */

typedef struct load_source {
  FILE *f;
  uint64_t read;
  kvp_progress *progress;
} load_source;

static int32_t KVP_CALL read_from_file(void *dst, size_t size, size_t *read_out, void *user_data) {
  load_source *s = (load_source *)user_data;
  const size_t n = fread(dst, 1, size, s->f);
  *read_out = n;
  if (n < size && ferror(s->f)) return EIO;
  s->read += n;
  kvp_progress_set(s->progress, s->read);
  return 0;
}

static void load_usage(FILE *f) {
  fprintf(f,
          "usage: kvp load FILE [options]\n"
          "\n"
          "Loads a serialized kvpages cache into a new CPU cache, streaming (every checksum is\n"
          "checked as the data arrives), and reports what was loaded and how fast.\n"
          "\n"
          "  --save OUT          then save the loaded cache to OUT (atomically replaced)\n"
          "  --pages LIST        with --save: only these page ids, e.g. 1,2,5-9 (default: every\n"
          "                      page of the cache, those the file did not carry being zero)\n"
          "  --json              print one JSON object instead of the text report\n"
          "  --progress WHEN     progress bar on stderr: auto (default: when stderr is a terminal\n"
          "                      and the file is at least 32 MiB), always, never\n"
          "\n"
          "Exit status 0 when loaded (and saved), 1 when the file is invalid or unreadable, 2 on\n"
          "usage errors.\n");
}

/* Parses "1,2,5-9" into a malloc'd array of page ids. Returns NULL on success, else why. */
static const char *parse_pages(const char *s, int32_t **ids_out, uint32_t *n_out) {
  size_t cap = 16, n = 0;
  int32_t *ids = (int32_t *)malloc(cap * sizeof *ids);
  const char *p = s;
  if (ids == NULL) return "out of memory";
  while (*p != '\0') {
    char *end = NULL;
    long first, last;
    errno = 0;
    first = strtol(p, &end, 10);
    if (end == p || first < 0 || first > INT32_MAX || errno != 0) break;
    last = first;
    p = end;
    if (*p == '-') {
      last = strtol(p + 1, &end, 10);
      if (end == p + 1 || last < first || last > INT32_MAX || errno != 0) break;
      p = end;
    }
    for (; first <= last; ++first) {
      if (n == cap) {
        int32_t *grown = n < 1u << 24 ? (int32_t *)realloc(ids, 2 * cap * sizeof *ids) : NULL;
        if (grown == NULL) {
          free(ids);
          return "too many pages";
        }
        ids = grown;
        cap *= 2;
      }
      ids[n++] = (int32_t)first;
    }
    if (*p == ',') ++p;
    else if (*p != '\0') break;
  }
  if (*p != '\0' || n == 0 || p[-1] == ',') {
    free(ids);
    return "expected page ids and ranges, e.g. 1,2,5-9";
  }
  *ids_out = ids;
  *n_out = (uint32_t)n;
  return NULL;
}

typedef struct load_args {
  const char *path, *save_path;
  int32_t *pages;
  uint32_t num_pages;
  int json;
  kvp_progress_mode progress;
} load_args;

static const kvp_tool_opt load_opts[] = {
    {"--save", "OUT"}, {"--pages", "LIST"}, {"--json", NULL}, {"--progress", "WHEN"}, {NULL, NULL}};

/* Returns -1 to go on, otherwise the exit code. */
static int parse_load_args(int argc, char **argv, load_args *la) {
  kvp_tool_args a;
  const kvp_tool_opt *opt;
  const char *v;
  int r;
  kvp_tool_args_init(&a, argc, argv, "kvp load", load_opts);
  while ((r = kvp_tool_next_arg(&a, &opt, &v)) != KVP_TOOL_ARG_END) {
    const char *why = NULL;
    if (r == KVP_TOOL_ARG_HELP) return load_usage(stdout), 0;
    if (r == KVP_TOOL_ARG_ERROR) return 2;
    if (r == KVP_TOOL_ARG_POSITIONAL) {
      if (la->path != NULL) {
        fprintf(stderr, "kvp load: one FILE only (got '%s' and '%s')\n", la->path, v);
        return 2;
      }
      la->path = v;
    } else if (kvp_tool_is(opt, "--save")) la->save_path = v;
    else if (kvp_tool_is(opt, "--json")) la->json = 1;
    else if (kvp_tool_is(opt, "--progress")) {
      if (kvp_tool_parse_progress(v, &la->progress) != 0) why = "valid values are " KVP_TOOL_PROGRESS;
    } else if (kvp_tool_is(opt, "--pages")) {
      free(la->pages);
      la->pages = NULL;
      why = parse_pages(v, &la->pages, &la->num_pages);
    }
    if (why != NULL) return kvp_tool_bad_value("kvp load", opt->name, v, why);
  }
  if (la->path == NULL) {
    fprintf(stderr, "kvp load: FILE is required\n\n");
    load_usage(stderr);
    return 2;
  }
  if (la->pages != NULL && la->save_path == NULL) {
    fprintf(stderr, "kvp load: --pages selects the pages to save; it needs --save OUT\n");
    return 2;
  }
  return -1;
}

static int load_failed(const load_args *la, kvp_status s) {
  fprintf(stderr, "kvp load: %s: %s\n", la->path, kvp_last_error_message());
  if (la->json) {
    printf("{\"command\":\"load\",\"file\":");
    kvp_tool_json_string(stdout, la->path);
    printf(",\"ok\":false,\"status\":\"%s\",\"error\":", kvp_status_name(s));
    kvp_tool_json_string(stdout, kvp_last_error_message());
    printf("}\n");
  }
  return 1;
}

static void load_report(const load_args *la, const kvp_serialized_info *info, double secs) {
  const kvp_config *c = &info->config;
  const double rate = secs > 0 ? (double)info->total_bytes / secs : 0.0;
  char b[32];
  if (la->json) {
    printf("{\"command\":\"load\",\"file\":");
    kvp_tool_json_string(stdout, la->path);
    printf(",\"ok\":true,\"layers\":%" PRId64 ",\"kv_heads\":%" PRId64 ",\"head_dim\":%" PRId64
           ",\"page_size\":%" PRId64 ",\"num_pages\":%" PRId64 ",\"dtype\":\"%s\",\"layout\":\"%s\""
           ",\"stored_pages\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"seconds\":%.6f,\"bytes_per_second\":%.0f,\"saved\":",
           c->num_hidden_layers, c->num_kv_heads, c->k_headdim, c->page_size, c->num_pages, kvp_dtype_name(c->kvdtype),
           kvp_layout_name(c->version), info->num_stored_pages, info->total_bytes, secs, rate);
    kvp_tool_json_string(stdout, la->save_path);
    printf(",\"saved_pages\":%" PRIu64 "}\n",
           la->save_path == NULL ? 0 : la->pages != NULL ? (uint64_t)la->num_pages : (uint64_t)c->num_pages);
    return;
  }
  printf("loaded %s: %" PRId64 " layers, %" PRId64 " KV heads, head dim %" PRId64 ", %s %s, page size %" PRId64
         ", %" PRIu64 " of %" PRId64 " pages stored\n",
         la->path, c->num_hidden_layers, c->num_kv_heads, c->k_headdim, kvp_layout_name(c->version),
         kvp_dtype_name(c->kvdtype), c->page_size, info->num_stored_pages, c->num_pages);
  printf("%s in %.3f s (%.2f GB/s), every checksum verified\n", kvp_tool_fmt_bytes((int64_t)info->total_bytes, b, sizeof b),
         secs, rate / 1e9);
  if (la->save_path != NULL) printf("saved to %s\n", la->save_path);
}

/* Saves the loaded cache: the pages of --pages, else every page. */
static int save_loaded(const load_args *la, kvp_cache *cache) {
  kvp_serialize_options so = KVP_SERIALIZE_OPTIONS_INIT;
  so.page_ids = la->pages;
  so.num_page_ids = la->num_pages;
  return kvp_tool_save("kvp load", cache, la->pages != NULL ? &so : NULL, la->save_path, la->progress);
}

int kvp_cmd_load(int argc, char **argv) {
  load_args la;
  kvp_serialized_info info = KVP_SERIALIZED_INFO_INIT;
  kvp_deserialize_options dopts = KVP_DESERIALIZE_OPTIONS_INIT;
  kvp_cache *cache = NULL;
  kvp_progress progress;
  load_source src;
  kvp_status s;
  double t0;
  int rc;
  memset(&la, 0, sizeof la);
  rc = parse_load_args(argc, argv, &la);
  if (rc >= 0) {
    free(la.pages);
    return rc;
  }
  s = kvp_serialized_inspect_file(la.path, 0, &info); /* the header: sizes for the bar and the report */
  if (s != KVP_OK) {
    free(la.pages);
    return load_failed(&la, s);
  }
  src.f = fopen(la.path, "rb");
  if (src.f == NULL) {
    fprintf(stderr, "kvp load: cannot open '%s': %s\n", la.path, strerror(errno));
    free(la.pages);
    return 1;
  }
  src.read = 0;
  src.progress = &progress;
  /* The limit the library applies to a file of known size (the reader's size is unknown to it). */
  dopts.max_cache_bytes = KVP_DESERIALIZE_DEFAULT_MAX_BYTES + info.total_bytes;
  kvp_progress_begin(&progress, "loading", info.total_bytes, la.progress);
  t0 = kvp_tool_now();
  s = kvp_deserialize_new_from_reader(read_from_file, &src, &dopts, &cache);
  t0 = kvp_tool_now() - t0;
  kvp_progress_end(&progress, s == KVP_OK);
  fclose(src.f);
  if (s != KVP_OK) rc = load_failed(&la, s);
  else if (la.save_path != NULL && save_loaded(&la, cache) != 0) rc = 1;
  else {
    load_report(&la, &info, t0);
    rc = 0;
  }
  kvp_cache_destroy(cache);
  free(la.pages);
  return rc;
}
