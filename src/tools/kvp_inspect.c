/* `kvp inspect FILE`: print a serialized cache file's header and config, verify every checksum,
 * and give a verdict. Exit status: 0 valid, 1 invalid or unreadable, 2 usage error. */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvp_tool.h"

static void inspect_usage(FILE *f) {
  fprintf(f,
          "usage: kvp inspect FILE\n"
          "\n"
          "Prints the header and config of a serialized kvpages cache (format KVPS) and verifies\n"
          "the header, page-table and every chunk checksum. Exit status 0 when the file is valid,\n"
          "1 when it is corrupt, truncated, of an unknown version or unreadable, 2 on usage errors.\n");
}

static void print_verdict_failure(const char *path, kvp_status s) {
  printf("verdict:        INVALID (%s)\n", kvp_status_name(s));
  printf("reason:         %s\n", kvp_last_error_message());
  fprintf(stderr, "kvp inspect: %s: %s\n", path, kvp_last_error_message());
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

int kvp_cmd_inspect(int argc, char **argv) {
  const char *path = NULL;
  kvp_serialized_info info;
  kvp_status s;
  char buf[1024];
  size_t n = 0;
  int i;
  for (i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      inspect_usage(stdout);
      return 0;
    }
    if (argv[i][0] == '-' || path != NULL) {
      inspect_usage(stderr);
      return 2;
    }
    path = argv[i];
  }
  if (path == NULL) {
    inspect_usage(stderr);
    return 2;
  }

  if (check_regular_file(path) != 0) return 1;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  printf("file:           %s\n", path);
  s = kvp_serialized_inspect_file(path, 0, &info);
  if (s != KVP_OK) {
    print_verdict_failure(path, s);
    return 1;
  }
  printf("format:         KVPS %u.%u (this library reads %u.x, writes %u.%u)\n", info.format_major,
         info.format_minor, KVP_FORMAT_MAJOR, KVP_FORMAT_MAJOR, KVP_FORMAT_MINOR);
  printf("header:         %u bytes, checksum %016" PRIx64 ", flags 0x%016" PRIx64 "\n", info.header_size,
         info.header_checksum, info.flags);
  printf("written by:     kvpages %u.%u.%u\n", info.writer_version / 10000, (info.writer_version / 100) % 100,
         info.writer_version % 100);
  printf("layout:         %s, dtype %s\n", kvp_layout_name(info.config.version) ? kvp_layout_name(info.config.version) : "?",
         kvp_dtype_name(info.config.kvdtype) ? kvp_dtype_name(info.config.kvdtype) : "?");
  printf("geometry:       %" PRId64 " layers, %" PRId64 " KV heads, head dim %" PRId64 ", page size %" PRId64
         ", %" PRId64 " pages\n",
         info.config.num_hidden_layers, info.config.num_kv_heads, info.config.k_headdim, info.config.page_size,
         info.config.num_pages);
  printf("stored pages:   %" PRIu64 " of %" PRId64 " (%" PRIu64 " bytes per page per layer)\n", info.num_stored_pages,
         info.config.num_pages, info.page_bytes_per_layer);
  printf("payload:        %" PRIu64 " bytes in %" PRIu64 " chunks of up to %" PRIu64 " bytes\n", info.payload_bytes,
         info.num_chunks, info.chunk_bytes);
  printf("total size:     %" PRIu64 " bytes\n", info.total_bytes);
  if (kvp_config_to_json(&info.config, buf, sizeof buf, &n) == KVP_OK) printf("config:         %s\n", buf);

  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  s = kvp_serialized_inspect_file(path, KVP_INSPECT_VERIFY, &info);
  if (s != KVP_OK) {
    print_verdict_failure(path, s);
    return 1;
  }
  if (info.num_stored_pages > 0)
    printf("page ids:       first %" PRIu64 ", last %" PRIu64 "\n", info.first_page_id, info.last_page_id);
  printf("verdict:        OK (header, page table and %" PRIu64 " chunk checksums verified)\n", info.num_chunks);
  return 0;
}
