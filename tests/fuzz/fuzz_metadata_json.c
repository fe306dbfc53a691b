/* libFuzzer target for kvp_metadata_from_json. Whatever the text, the call returns a status
 * and, on failure, sets the handle to NULL. Metadata it reads writes back to JSON (size, then
 * fill) that reads as metadata writing the very same text: a fixed point after one trip. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kvpages.h"

/* The JSON of md, malloc'ed and NUL-terminated; its length in *len. */
static char *write_json(const kvp_metadata *md, size_t *len) {
  size_t need = 0;
  kvp_status st = kvp_metadata_to_json(md, NULL, 0, &need);
  kvp_fuzz_check(st == KVP_ERR_BUFFER_TOO_SMALL && need > 0, "kvp_metadata_to_json size query: %s",
                 kvp_status_name(st));
  char *text = (char *)malloc(need);
  kvp_fuzz_check(text != NULL, "malloc");
  st = kvp_metadata_to_json(md, text, need, len);
  kvp_fuzz_check(st == KVP_OK, "kvp_metadata_to_json with the size it asked for: %s", kvp_status_name(st));
  kvp_fuzz_check(*len + 1 == need && text[*len] == '\0', "kvp_metadata_to_json: length %zu of %zu", *len, need);
  return text;
}

static void check_round_trip(const kvp_metadata *md) {
  size_t len = 0, len2 = 0;
  char *text = write_json(md, &len);
  kvp_metadata *back = NULL;
  const kvp_status st = kvp_metadata_from_json(text, len, &back);
  kvp_fuzz_check(st == KVP_OK, "kvp_metadata_from_json of its own output: %s\n%s", kvp_status_name(st), text);
  char *again = write_json(back, &len2);
  kvp_fuzz_check(len == len2 && memcmp(text, again, len) == 0, "metadata JSON is not a fixed point:\n%s\n%s", text,
                 again);
  kvp_metadata_destroy(back);
  free(again);
  free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kvp_metadata *md = (kvp_metadata *)(uintptr_t)1;
  const kvp_status st = kvp_metadata_from_json((const char *)data, size, &md);
  if (st != KVP_OK) {
    kvp_fuzz_check(st == KVP_ERR_INVALID_ARGUMENT || st == KVP_ERR_NOT_FOUND || st == KVP_ERR_OUT_OF_MEMORY,
                   "kvp_metadata_from_json: undocumented status %s", kvp_status_name(st));
    kvp_fuzz_check(md == NULL, "kvp_metadata_from_json failed but left the handle set");
    kvp_fuzz_check(kvp_last_error_message()[0] != '\0', "kvp_metadata_from_json failed without a message");
    return 0;
  }
  check_round_trip(md);
  kvp_fuzz_check(kvp_metadata_destroy(md) == KVP_OK, "kvp_metadata_destroy");
  return 0;
}
