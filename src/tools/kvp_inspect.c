/* `kvp inspect FILE`: print a serialized cache file's header and config, verify every checksum,
 * and give a verdict, as text or one JSON object. Exit status: 0 valid, 1 invalid or unreadable,
 * 2 usage error. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kvp_tool.h"

static void inspect_usage(FILE *f) {
  fprintf(f,
          "usage: kvp inspect FILE [options]\n"
          "\n"
          "Prints the header and config of a serialized kvpages cache (format KVPS) and verifies\n"
          "the header, page-table and every chunk checksum. Exit status 0 when the file is valid,\n"
          "1 when it is corrupt, truncated, of an unknown version or unreadable, 2 on usage errors.\n"
          "\n"
          "  --json              print one JSON object (fields: docs/kvp-tool.md)\n"
          "  --progress WHEN     progress bar of the verification on stderr: auto (default: when\n"
          "                      stderr is a terminal and the file is at least 32 MiB), always, never\n");
}

/* What kind of file st is, for a message. */
static const char *file_kind(const struct stat *st) {
  if (S_ISDIR(st->st_mode)) return "a directory";
  if (S_ISFIFO(st->st_mode)) return "a FIFO";
  if (S_ISSOCK(st->st_mode)) return "a socket";
  if (S_ISCHR(st->st_mode)) return "a character device";
  if (S_ISBLK(st->st_mode)) return "a block device";
  return "not a regular file";
}

/* Refuses anything but a regular file before the library opens it: opening a FIFO for reading
 * waits for a writer, forever if none comes (O_NONBLOCK here does not wait). A path that cannot be
 * opened or examined passes: the library's open reports why. Returns 0 when the path may be inspected. */
static int check_regular_file(const char *path) {
  struct stat st;
  int ok;
  const int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return 0;
  ok = fstat(fd, &st) != 0 || S_ISREG(st.st_mode);
  if (!ok) fprintf(stderr, "kvp inspect: '%s' is %s, not a serialized cache file\n", path, file_kind(&st));
  close(fd);
  return ok ? 0 : -1;
}

/* ---- Progress of the verification ------------------------------------------------------------ */

static kvp_status verify_call(void *arg) {
  const void *const *a = (const void *const *)arg;
  return kvp_serialized_inspect_file((const char *)a[0], KVP_INSPECT_VERIFY, (kvp_serialized_info *)a[1]);
}

/* kvp_serialized_inspect_file() with KVP_INSPECT_VERIFY, with a progress bar over total bytes
 * (the bytes this process reads while it runs). */
static kvp_status verify_file(const char *path, uint64_t total, kvp_progress_mode mode, kvp_serialized_info *out) {
  kvp_progress progress;
  const void *args[2] = {path, out};
  kvp_status s;
  kvp_progress_begin(&progress, "verifying", total, mode);
  s = kvp_tool_watch_io(&progress, KVP_IO_READ, verify_call, (void *)args);
  kvp_progress_end(&progress, s == KVP_OK);
  return s;
}

/* ---- Output ----------------------------------------------------------------------------------- */

static void print_header_text(const kvp_serialized_info *info) {
  printf("format:         KVPS %u.%u (this library reads %u.x, writes %u.%u)\n", info->format_major,
         info->format_minor, KVP_FORMAT_MAJOR, KVP_FORMAT_MAJOR, KVP_FORMAT_MINOR);
  printf("header:         %u bytes, checksum %016" PRIx64 ", flags 0x%016" PRIx64 "\n", info->header_size,
         info->header_checksum, info->flags);
  printf("written by:     kvpages %u.%u.%u\n", info->writer_version / 10000, (info->writer_version / 100) % 100,
         info->writer_version % 100);
  printf("layout:         %s, dtype %s\n",
         kvp_layout_name(info->config.version) ? kvp_layout_name(info->config.version) : "?",
         kvp_dtype_name(info->config.kvdtype) ? kvp_dtype_name(info->config.kvdtype) : "?");
  printf("geometry:       %" PRId64 " layers, %" PRId64 " KV heads, head dim %" PRId64 ", page size %" PRId64
         ", %" PRId64 " pages\n",
         info->config.num_hidden_layers, info->config.num_kv_heads, info->config.k_headdim, info->config.page_size,
         info->config.num_pages);
  if (info->shard.tp_size > 1 || info->shard.dp_size > 1)
    printf("shard:          tp %d of %d, dp %d of %d: combined entries [%" PRId64 ", %" PRId64 ") (KV heads %" PRId64
           "..%" PRId64 "), pages [%" PRId64 ", %" PRId64 ")\n",
           info->shard.tp_rank, info->shard.tp_size, info->shard.dp_rank, info->shard.dp_size, info->shard.slot_begin,
           info->shard.slot_end, info->shard.head_begin, info->shard.head_end - 1, info->shard.page_begin,
           info->shard.page_end);
  else
    printf("shard:          none (the whole cache)\n");
  printf("stored pages:   %" PRIu64 " of %" PRId64 " (%" PRIu64 " bytes per page per layer)\n",
         info->num_stored_pages, info->config.num_pages, info->page_bytes_per_layer);
  printf("payload:        %" PRIu64 " bytes in %" PRIu64 " chunks of up to %" PRIu64 " bytes\n",
         info->payload_bytes, info->num_chunks, info->chunk_bytes);
  printf("total size:     %" PRIu64 " bytes\n", info->total_bytes);
  printf("config:         ");
  kvp_tool_json_config(stdout, &info->config);
  printf("\n");
}

/* One JSON object: the header's fields when it could be read (header NULL otherwise), the page
 * ids when the verification got that far (verified NULL otherwise), and the verdict. */
static void print_json(const char *path, const kvp_serialized_info *header, const kvp_serialized_info *verified,
                       kvp_status s, const char *error) {
  printf("{\"command\":\"inspect\",\"kvpages_version\":\"%s\",\"file\":", kvp_version_string());
  kvp_tool_json_string(stdout, path);
  printf(",\"valid\":%s,\"status\":\"%s\",\"error\":", s == KVP_OK ? "true" : "false", kvp_status_name(s));
  kvp_tool_json_string(stdout, s == KVP_OK ? NULL : error);
  if (header != NULL) {
    const kvp_config *c = &header->config;
    printf(",\"format_major\":%u,\"format_minor\":%u,\"header_bytes\":%u,\"header_checksum\":\"%016" PRIx64
           "\",\"flags\":%" PRIu64 ",\"writer_version\":\"%u.%u.%u\",\"layout\":",
           header->format_major, header->format_minor, header->header_size, header->header_checksum, header->flags,
           header->writer_version / 10000, (header->writer_version / 100) % 100, header->writer_version % 100);
    kvp_tool_json_string(stdout, kvp_layout_name(c->version));
    printf(",\"dtype\":");
    kvp_tool_json_string(stdout, kvp_dtype_name(c->kvdtype));
    printf(",\"layers\":%" PRId64 ",\"kv_heads\":%" PRId64 ",\"head_dim\":%" PRId64 ",\"page_size\":%" PRId64
           ",\"num_pages\":%" PRId64 ",\"stored_pages\":%" PRIu64 ",\"page_bytes_per_layer\":%" PRIu64
           ",\"payload_bytes\":%" PRIu64 ",\"num_chunks\":%" PRIu64 ",\"chunk_bytes\":%" PRIu64
           ",\"total_bytes\":%" PRIu64,
           c->num_hidden_layers, c->num_kv_heads, c->k_headdim, c->page_size, c->num_pages, header->num_stored_pages,
           header->page_bytes_per_layer, header->payload_bytes, header->num_chunks, header->chunk_bytes,
           header->total_bytes);
    printf(",\"shard\":{\"tp_rank\":%d,\"tp_size\":%d,\"dp_rank\":%d,\"dp_size\":%d,\"slot_begin\":%" PRId64
           ",\"slot_end\":%" PRId64 ",\"head_begin\":%" PRId64 ",\"head_end\":%" PRId64 ",\"page_begin\":%" PRId64
           ",\"page_end\":%" PRId64 "}",
           header->shard.tp_rank, header->shard.tp_size, header->shard.dp_rank, header->shard.dp_size,
           header->shard.slot_begin, header->shard.slot_end, header->shard.head_begin, header->shard.head_end,
           header->shard.page_begin, header->shard.page_end);
    if (verified != NULL && verified->num_stored_pages > 0)
      printf(",\"first_page_id\":%" PRIu64 ",\"last_page_id\":%" PRIu64, verified->first_page_id,
             verified->last_page_id);
    else printf(",\"first_page_id\":null,\"last_page_id\":null");
    printf(",\"config\":");
    kvp_tool_json_config(stdout, c);
  }
  printf("}\n");
}

static int verdict_failure(const char *path, kvp_status s, int json, const kvp_serialized_info *header) {
  if (json) {
    print_json(path, header, NULL, s, kvp_last_error_message());
  } else {
    printf("verdict:        INVALID (%s)\n", kvp_status_name(s));
    printf("reason:         %s\n", kvp_last_error_message());
  }
  fprintf(stderr, "kvp inspect: %s: %s\n", path, kvp_last_error_message());
  return 1;
}

static const kvp_tool_opt inspect_opts[] = {{"--json", NULL}, {"--progress", "WHEN"}, {NULL, NULL}};

int kvp_cmd_inspect(int argc, char **argv) {
  const char *path = NULL;
  kvp_serialized_info header = KVP_SERIALIZED_INFO_INIT, verified = KVP_SERIALIZED_INFO_INIT;
  kvp_progress_mode progress = KVP_PROGRESS_AUTO;
  kvp_tool_args a;
  const kvp_tool_opt *opt;
  const char *v;
  kvp_status s;
  int r, json = 0;
  kvp_tool_args_init(&a, argc, argv, "kvp inspect", inspect_opts);
  while ((r = kvp_tool_next_arg(&a, &opt, &v)) != KVP_TOOL_ARG_END) {
    if (r == KVP_TOOL_ARG_HELP) return inspect_usage(stdout), 0;
    if (r == KVP_TOOL_ARG_ERROR) return 2;
    if (r == KVP_TOOL_ARG_POSITIONAL) {
      if (path != NULL) {
        fprintf(stderr, "kvp inspect: one FILE only (got '%s' and '%s')\n", path, v);
        return 2;
      }
      path = v;
    } else if (kvp_tool_is(opt, "--json")) json = 1;
    else if (kvp_tool_parse_progress(v, &progress) != 0)
      return kvp_tool_bad_value("kvp inspect", opt->name, v, "valid values are " KVP_TOOL_PROGRESS);
  }
  if (path == NULL) {
    fprintf(stderr, "kvp inspect: FILE is required\n\n");
    inspect_usage(stderr);
    return 2;
  }

  if (check_regular_file(path) != 0) return 1;
  if (!json) printf("file:           %s\n", path);
  s = kvp_serialized_inspect_file(path, 0, &header);
  if (s != KVP_OK) return verdict_failure(path, s, json, NULL);
  if (!json) print_header_text(&header);
  s = verify_file(path, header.total_bytes, progress, &verified);
  if (s != KVP_OK) return verdict_failure(path, s, json, &header);
  if (json) {
    print_json(path, &header, &verified, s, NULL);
    return 0;
  }
  if (verified.num_stored_pages > 0)
    printf("page ids:       first %" PRIu64 ", last %" PRIu64 "\n", verified.first_page_id, verified.last_page_id);
  printf("verdict:        OK (header, page table and %" PRIu64 " chunk checksums verified)\n", verified.num_chunks);
  return 0;
}
