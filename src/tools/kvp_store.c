/* `kvp store ls|stat|scrub SPEC`: what a block store (storage tier) holds, and its check. Every
 * block is listed (kvp_store_list), read and its header read (kvp_store_block_inspect). Exit
 * status: 0 every block sound, 1 a damaged block found or the store unusable, 2 usage error. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kvp_tool.h"

static void store_usage(FILE *f) {
  fprintf(f,
          "usage: kvp store ls|stat|scrub SPEC [options]\n"
          "\n"
          "Shows what a block store (a pool's storage tier) holds and checks it. SPEC is a directory\n"
          "store (a directory of .kvpb block files; it must exist) or a Redis URL (redis://HOST:PORT,\n"
          "redis+cluster://HOST:PORT).\n"
          "\n"
          "  ls      one line per block: key, bytes, config fingerprint, page size, salt, and whether\n"
          "          its checksum holds (ok, BAD; 'other' for a block that is not a page block)\n"
          "  stat    blocks and bytes, and per config fingerprint: blocks, bytes, page size, layers,\n"
          "          page bytes; damaged blocks\n"
          "  scrub   the store's own check (deleting damaged files), then every page block's checksum:\n"
          "          damaged page blocks are removed\n"
          "\n"
          "Reading a damaged block file of a directory store deletes it (so ls and stat report it\n"
          "once). Exit status 0 when every block is sound, 1 when a damaged block was found or the\n"
          "store cannot be opened or read, 2 on usage errors.\n"
          "\n"
          "  --json   print one JSON object (fields: docs/kvp-tool.md)\n");
}

/* ---- Opening a store (also for the demo: kvp_tool.h) ----------------------------------------- */

static int has_prefix(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

int kvp_tool_open_store(const char *cmd, const char *spec, uint64_t max_bytes, int create, kvp_store **out) {
  struct stat st;
  kvp_status s;
  *out = NULL;
  if (has_prefix(spec, "redis://") || has_prefix(spec, "redis+cluster://")) {
    s = kvp_store_create_redis(spec, NULL, out); /* Redis bounds itself: max_bytes is not used */
    if (s != KVP_OK) {
      fprintf(stderr, "%s: '%s': %s\n", cmd, spec, kvp_last_error_message());
      return 1;
    }
    return 0;
  }
  if (strstr(spec, "://") != NULL) {
    fprintf(stderr, "%s: '%s' is not a store: give a directory, a redis:// or a redis+cluster:// URL\n", cmd, spec);
    return 2;
  }
  if (!create && stat(spec, &st) != 0) {
    fprintf(stderr, "%s: the store directory '%s' does not exist (%s)\n", cmd, spec, strerror(errno));
    return 1;
  }
  if (!create && !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "%s: '%s' is not a directory\n", cmd, spec);
    return 1;
  }
  s = kvp_store_create_directory(spec, max_bytes != 0 ? max_bytes : (uint64_t)INT64_MAX, NULL, out);
  if (s != KVP_OK) {
    fprintf(stderr, "%s: %s\n", cmd, kvp_last_error_message());
    return 1;
  }
  return 0;
}

/* ---- Walking the blocks ------------------------------------------------------------------------ */

/* What one block is. */
typedef enum { BLOCK_OK = 0, BLOCK_DAMAGED, BLOCK_OTHER } block_state;

typedef struct block {
  kvp_store_key key;
  size_t bytes;
  block_state state;
  kvp_store_block_info info; /* valid unless state is BLOCK_OTHER or the read failed */
  int has_info;
  const char *why; /* for a damaged or other block: why_text, else NULL */
  char why_text[512];
} block;

typedef int (*block_fn)(const block *b, void *ctx);

/* Reads the block of key into *buf (grown as needed) and describes it. Returns 0, 1 when the
 * block vanished meanwhile, -1 on an error (printed). */
static int read_block(const char *cmd, kvp_store *store, const kvp_store_key *key, uint8_t **buf, size_t *cap,
                      block *b) {
  kvp_status s;
  memset(b, 0, sizeof *b);
  b->key = *key;
  s = kvp_store_get(store, key, *buf, *cap, &b->bytes);
  if (s == KVP_ERR_BUFFER_TOO_SMALL) { /* b->bytes is the block's size */
    uint8_t *grown = (uint8_t *)realloc(*buf, b->bytes);
    if (grown == NULL) {
      fprintf(stderr, "%s: out of memory for a block of %zu bytes\n", cmd, b->bytes);
      return -1;
    }
    *buf = grown;
    *cap = b->bytes;
    s = kvp_store_get(store, key, *buf, *cap, &b->bytes);
  }
  if (s == KVP_ERR_NOT_FOUND) return 1;
  if (s >= KVP_ERR_FORMAT_MAGIC && s <= KVP_ERR_FORMAT_MISMATCH) {
    b->state = BLOCK_DAMAGED;
    snprintf(b->why_text, sizeof b->why_text, "%s", kvp_last_error_message());
    b->why = b->why_text;
    return 0;
  }
  if (s != KVP_OK) {
    fprintf(stderr, "%s: %s\n", cmd, kvp_last_error_message());
    return -1;
  }
  b->info.struct_size = sizeof b->info;
  s = kvp_store_block_inspect(*buf, b->bytes, &b->info);
  b->has_info = s == KVP_OK;
  if (s == KVP_ERR_FORMAT_MAGIC) b->state = BLOCK_OTHER;
  else if (s != KVP_OK || !b->info.checksum_ok) b->state = BLOCK_DAMAGED;
  if (s != KVP_OK) snprintf(b->why_text, sizeof b->why_text, "%s", kvp_last_error_message());
  else snprintf(b->why_text, sizeof b->why_text, "the block's checksum does not match");
  b->why = b->state == BLOCK_OK ? NULL : b->why_text;
  return 0;
}

/* Calls fn for every block of the store. Returns 0, or 1 after printing why. */
static int walk(const char *cmd, kvp_store *store, block_fn fn, void *ctx) {
  kvp_store_key keys[256];
  uint64_t cursor = 0;
  uint8_t *buf = NULL;
  size_t cap = 0, n = 0, i;
  int r = 0;
  do {
    if (kvp_store_list(store, &cursor, keys, sizeof keys / sizeof keys[0], &n) != KVP_OK) {
      fprintf(stderr, "%s: %s\n", cmd, kvp_last_error_message());
      r = 1;
      break;
    }
    for (i = 0; i < n && r == 0; ++i) {
      block b;
      const int got = read_block(cmd, store, &keys[i], &buf, &cap, &b);
      if (got < 0) r = 1;
      else if (got == 0) r = fn(&b, ctx);
    }
  } while (cursor != 0 && r == 0);
  free(buf);
  return r;
}

/* ---- Output ------------------------------------------------------------------------------------ */

static void key_hex(const kvp_store_key *k, char out[33]) {
  static const char hex[] = "0123456789abcdef";
  int i;
  for (i = 0; i < 16; ++i) {
    out[2 * i] = hex[k->bytes[i] >> 4];
    out[2 * i + 1] = hex[k->bytes[i] & 15];
  }
  out[32] = '\0';
}

static const char *state_name(block_state s) { return s == BLOCK_OK ? "ok" : s == BLOCK_DAMAGED ? "BAD" : "other"; }

typedef struct walk_ctx {
  int json, first;
  int64_t blocks, bytes, damaged, other, removed;
  kvp_store *store; /* scrub: where damaged blocks are removed */
  struct config_sum {
    uint64_t fingerprint;
    uint32_t page_size, num_layers;
    uint64_t page_bytes;
    int64_t blocks, bytes;
  } configs[64];
  size_t num_configs;
} walk_ctx;

static void count(walk_ctx *c, const block *b) {
  size_t i;
  ++c->blocks;
  c->bytes += (int64_t)b->bytes;
  c->damaged += b->state == BLOCK_DAMAGED;
  c->other += b->state == BLOCK_OTHER;
  if (b->state != BLOCK_OK) return;
  for (i = 0; i < c->num_configs && c->configs[i].fingerprint != b->info.fingerprint; ++i) continue;
  if (i == c->num_configs) {
    if (i == sizeof c->configs / sizeof c->configs[0]) return; /* more configs than a table shows */
    memset(&c->configs[i], 0, sizeof c->configs[i]);
    c->configs[i].fingerprint = b->info.fingerprint;
    c->configs[i].page_size = b->info.page_size;
    c->configs[i].num_layers = b->info.num_layers;
    c->configs[i].page_bytes = b->info.page_bytes;
    ++c->num_configs;
  }
  ++c->configs[i].blocks;
  c->configs[i].bytes += (int64_t)b->bytes;
}

static int ls_block(const block *b, void *ctx) {
  walk_ctx *c = (walk_ctx *)ctx;
  char hex[33], parent[33];
  count(c, b);
  key_hex(&b->key, hex);
  if (!c->json) {
    if (b->has_info)
      printf("%s  %10zu  %016" PRIx64 "  %9u  %016" PRIx64 "  %s\n", hex, b->bytes, b->info.fingerprint,
             b->info.page_size, b->info.salt, state_name(b->state));
    else printf("%s  %10zu  %16s  %9s  %16s  %s\n", hex, b->bytes, "-", "-", "-", state_name(b->state));
    if (b->state == BLOCK_DAMAGED) fprintf(stderr, "kvp store ls: %s: %s\n", hex, b->why);
    return 0;
  }
  printf("%s{\"key\":\"%s\",\"bytes\":%zu,\"state\":\"%s\"", c->first ? "" : ",", hex, b->bytes, state_name(b->state));
  c->first = 0;
  if (b->has_info) {
    key_hex(&b->info.parent, parent);
    printf(",\"fingerprint\":\"%016" PRIx64 "\",\"parent\":\"%s\",\"salt\":%" PRIu64 ",\"page_size\":%u,\"layers\":%u"
           ",\"page_bytes\":%" PRIu64 ",\"checksum_ok\":%s",
           b->info.fingerprint, parent, b->info.salt, b->info.page_size, b->info.num_layers, b->info.page_bytes,
           b->info.checksum_ok ? "true" : "false");
  }
  printf(",\"error\":");
  kvp_tool_json_string(stdout, b->why);
  printf("}");
  return 0;
}

static int stat_block(const block *b, void *ctx) {
  count((walk_ctx *)ctx, b);
  if (b->state == BLOCK_DAMAGED) {
    char hex[33];
    key_hex(&b->key, hex);
    fprintf(stderr, "kvp store stat: %s: %s\n", hex, b->why);
  }
  return 0;
}

/* Scrub: a damaged page block is removed (other blocks are not the pool's: left alone). */
static int scrub_block(const block *b, void *ctx) {
  walk_ctx *c = (walk_ctx *)ctx;
  const kvp_status s = b->state == BLOCK_DAMAGED ? kvp_store_remove(c->store, &b->key) : KVP_OK;
  char hex[33];
  count(c, b);
  if (b->state != BLOCK_DAMAGED) return 0;
  key_hex(&b->key, hex);
  if (s != KVP_OK && s != KVP_ERR_NOT_FOUND) {
    fprintf(stderr, "kvp store scrub: %s\n", kvp_last_error_message());
    return 1;
  }
  ++c->removed;
  fprintf(stderr, "kvp store scrub: %s: %s: removed\n", hex, b->why);
  return 0;
}

static void print_stat(const char *spec, const walk_ctx *c) {
  char size[32];
  size_t i;
  if (c->json) {
    printf("{\"command\":\"store stat\",\"kvpages_version\":\"%s\",\"store\":", kvp_version_string());
    kvp_tool_json_string(stdout, spec);
    printf(",\"blocks\":%" PRId64 ",\"bytes\":%" PRId64 ",\"damaged\":%" PRId64 ",\"other\":%" PRId64 ",\"configs\":[",
           c->blocks, c->bytes, c->damaged, c->other);
    for (i = 0; i < c->num_configs; ++i)
      printf("%s{\"fingerprint\":\"%016" PRIx64 "\",\"blocks\":%" PRId64 ",\"bytes\":%" PRId64
             ",\"page_size\":%u,\"layers\":%u,\"page_bytes\":%" PRIu64 "}",
             i ? "," : "", c->configs[i].fingerprint, c->configs[i].blocks, c->configs[i].bytes,
             c->configs[i].page_size, c->configs[i].num_layers, c->configs[i].page_bytes);
    printf("]}\n");
    return;
  }
  printf("store:    %s\n", spec);
  printf("blocks:   %" PRId64 " (%s)\n", c->blocks, kvp_tool_fmt_bytes(c->bytes, size, sizeof size));
  printf("damaged:  %" PRId64 "\n", c->damaged);
  printf("other:    %" PRId64 " (not page blocks)\n", c->other);
  for (i = 0; i < c->num_configs; ++i)
    printf("config %016" PRIx64 ": %" PRId64 " blocks, %s, page size %u, %u layers, %" PRIu64
           " bytes per page per layer\n",
           c->configs[i].fingerprint, c->configs[i].blocks,
           kvp_tool_fmt_bytes(c->configs[i].bytes, size, sizeof size), c->configs[i].page_size,
           c->configs[i].num_layers, c->configs[i].page_bytes);
}

static void print_scrub(const char *spec, const kvp_store_scrub_report *r, int supported, const walk_ctx *c) {
  if (c->json) {
    printf("{\"command\":\"store scrub\",\"kvpages_version\":\"%s\",\"store\":", kvp_version_string());
    kvp_tool_json_string(stdout, spec);
    if (supported)
      printf(",\"store_check\":{\"blocks_checked\":%" PRId64 ",\"blocks_damaged\":%" PRId64 ",\"bytes_freed\":%" PRId64
             "}",
             r->blocks_checked, r->blocks_damaged, r->bytes_freed);
    else printf(",\"store_check\":null");
    printf(",\"blocks\":%" PRId64 ",\"damaged\":%" PRId64 ",\"removed\":%" PRId64 ",\"other\":%" PRId64 "}\n",
           c->blocks, c->damaged, c->removed, c->other);
    return;
  }
  printf("store:        %s\n", spec);
  if (supported)
    printf("store check:  %" PRId64 " blocks checked, %" PRId64 " damaged (deleted), %" PRId64 " bytes freed\n",
           r->blocks_checked, r->blocks_damaged, r->bytes_freed);
  else printf("store check:  none (the store checks its own blocks)\n");
  printf("blocks read:  %" PRId64 ": %" PRId64 " damaged page blocks (%" PRId64 " removed), %" PRId64
         " other blocks left alone\n",
         c->blocks, c->damaged, c->removed, c->other);
}

/* ---- The subcommand ---------------------------------------------------------------------------- */

static const kvp_tool_opt store_opts[] = {{"--json", NULL}, {NULL, NULL}};

int kvp_cmd_store(int argc, char **argv) {
  const char *action = NULL, *spec = NULL, *v, *cmd;
  const kvp_tool_opt *opt;
  kvp_tool_args a;
  kvp_store *store = NULL;
  walk_ctx c;
  int r, json = 0;
  kvp_tool_args_init(&a, argc, argv, "kvp store", store_opts);
  while ((r = kvp_tool_next_arg(&a, &opt, &v)) != KVP_TOOL_ARG_END) {
    if (r == KVP_TOOL_ARG_HELP) return store_usage(stdout), 0;
    if (r == KVP_TOOL_ARG_ERROR) return 2;
    if (r == KVP_TOOL_ARG_OPTION) json = 1;
    else if (action == NULL) action = v;
    else if (spec == NULL) spec = v;
    else {
      fprintf(stderr, "kvp store: one SPEC only (got '%s' and '%s')\n", spec, v);
      return 2;
    }
  }
  if (action == NULL || spec == NULL) {
    fprintf(stderr, "kvp store: %s is required\n\n", action == NULL ? "an action (ls, stat or scrub)" : "SPEC");
    store_usage(stderr);
    return 2;
  }
  cmd = strcmp(action, "ls") == 0 ? "kvp store ls" : strcmp(action, "stat") == 0 ? "kvp store stat"
        : strcmp(action, "scrub") == 0                                        ? "kvp store scrub"
                                                                              : NULL;
  if (cmd == NULL) {
    fprintf(stderr, "kvp store: unknown action '%s' (valid actions: ls, stat, scrub)\n", action);
    return 2;
  }
  r = kvp_tool_open_store(cmd, spec, 0, 0, &store);
  if (r != 0) return r;
  memset(&c, 0, sizeof c);
  c.json = json;
  c.first = 1;
  c.store = store;
  if (strcmp(action, "ls") == 0) {
    if (json) {
      printf("{\"command\":\"store ls\",\"kvpages_version\":\"%s\",\"store\":", kvp_version_string());
      kvp_tool_json_string(stdout, spec);
      printf(",\"blocks\":[");
    } else {
      printf("%-32s  %10s  %-16s  %9s  %-16s  %s\n", "key", "bytes", "fingerprint", "page_size", "salt", "checksum");
    }
    r = walk(cmd, store, ls_block, &c);
    if (json) printf("]}\n");
  } else if (strcmp(action, "stat") == 0) {
    r = walk(cmd, store, stat_block, &c);
    if (r == 0) print_stat(spec, &c);
  } else {
    kvp_store_scrub_report rep = KVP_STORE_SCRUB_REPORT_INIT;
    const kvp_status s = kvp_store_scrub(store, &rep);
    if (s != KVP_OK && s != KVP_ERR_UNSUPPORTED) {
      fprintf(stderr, "%s: %s\n", cmd, kvp_last_error_message());
      r = 1;
    } else {
      r = walk(cmd, store, scrub_block, &c);
      if (r == 0) print_scrub(spec, &rep, s == KVP_OK, &c);
    }
    c.damaged += rep.blocks_damaged; /* for the exit status */
  }
  kvp_store_destroy(store);
  if (r != 0) return r;
  return c.damaged > 0 ? 1 : 0;
}
