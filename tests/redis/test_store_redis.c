/* Tests of the Redis store (kvp_store_create_redis) against real servers started by
 * scripts/with-redis.sh (a single server and a three-master Redis Cluster on loopback ports;
 * their addresses in KVP_TEST_REDIS_* variables; a case needing them skips without). Bad URLs and
 * a refused connection; round trips on one server and on the cluster, keys spread over every
 * master; a slot migrated between masters while in use (ASK, then MOVED followed); a server
 * stopped (the timeout bounds every call, and after a timeout the server is skipped for a growing
 * while; in the cluster only the stopped master), killed between and during calls, and restarted;
 * values truncated or bit-flipped behind the store's back (through hiredis) found on get and by
 * scrub; listings (kvp_store_list) a few keys at a time; a pool whose tier is Redis restores
 * exactly the bytes it evicted, and nothing wrong after damage. */
#include "prompt_pages.h"
#include "store_blocks.h"
#include "support.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvpages/pool.h"
#include "kvpages/store.h"

/* ---- servers ------------------------------------------------------------------------------ */

/* The variable's value, or skip() the case. */
static const char *need(const char *var) {
  const char *v = getenv(var);
  if (v == NULL || v[0] == '\0') {
    print_message("kvpages: %s not set (run through scripts/with-redis.sh): skipped\n", var);
    skip();
  }
  return v;
}

/* The port of the first HOST:PORT of a URL. */
static int url_port(const char *url) {
  const char *p = strstr(url, "//") + 2;
  return atoi(strchr(p, ':') + 1);
}

static redisContext *raw_connect(int port) {
  redisContext *c = redisConnect("127.0.0.1", port);
  assert_non_null(c);
  assert_int_equal(c->err, 0);
  return c;
}

static redisReply *raw(redisContext *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = (redisReply *)redisvCommand(c, fmt, ap);
  va_end(ap);
  assert_non_null(r);
  return r;
}

static pid_t single_pid(void) {
  FILE *f = fopen(need("KVP_TEST_REDIS_PIDFILE"), "r");
  assert_non_null(f);
  int pid = 0;
  assert_int_equal(fscanf(f, "%d", &pid), 1);
  fclose(f);
  return (pid_t)pid;
}

static void restart_single(void) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "%s", need("KVP_TEST_REDIS_RESTART"));
  assert_int_equal(system(cmd), 0);
}

/* A store on `url` with a key prefix, timeout in ms (0: default). */
static kvp_store *open_store(const char *url, const char *prefix, uint32_t timeout_ms) {
  char u[512];
  snprintf(u, sizeof u, "%s?prefix=%s", url, prefix);
  kvp_store_options o = KVP_STORE_OPTIONS_INIT;
  o.timeout_ms = timeout_ms;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create_redis(u, &o, &s));
  return s;
}

/* ---- blocks ------------------------------------------------------------------------------- */

/* The Redis name of a key: prefix and 32 hex digits. */
static void name_of(const char *prefix, const kvp_store_key *k, char *out, size_t cap) {
  int n = snprintf(out, cap, "%s", prefix);
  for (int i = 0; i < 16; ++i) n += snprintf(out + n, cap - (size_t)n, "%02x", k->bytes[i]);
}

static void expect_missing(kvp_store *s, uint32_t key) {
  uint8_t b[16];
  size_t got = 0;
  const kvp_store_key k = kvp_test_store_key(key);
  assert_kvp_status(kvp_store_get(s, &k, b, sizeof b, &got), KVP_ERR_NOT_FOUND, "no block");
  uint8_t found = 9;
  assert_kvp_ok(kvp_store_exists(s, &k, 1, &found));
  assert_int_equal(found, 0);
}

/* Lists the store's keys `cap` at a time (kvp_store_list) and checks that exactly keys 0..n-1
 * but `missing` were found (each at least once; Redis SCAN may repeat one). */
static void expect_listing(kvp_store *s, uint32_t n, uint32_t missing, size_t cap) {
  uint8_t seen[256] = {0};
  assert_true(n <= 256);
  kvp_store_key page[64];
  assert_true(cap <= 64);
  uint64_t cursor = 0;
  int calls = 0;
  do {
    size_t got = 99;
    assert_kvp_ok(kvp_store_list(s, &cursor, page, cap, &got));
    assert_true(got <= cap);
    for (size_t i = 0; i < got; ++i) {
      uint32_t k = 0;
      for (; k < n; ++k) {
        const kvp_store_key want = kvp_test_store_key(k);
        if (memcmp(want.bytes, page[i].bytes, 16) == 0) break;
      }
      assert_true(k < n); /* one of ours */
      seen[k] = 1;
    }
    assert_true(++calls < 10000);
  } while (cursor != 0);
  for (uint32_t k = 0; k < n; ++k) assert_int_equal(seen[k], k != missing);
}

/* ---- cases -------------------------------------------------------------------------------- */

static void test_store_redis__bad_urls(void **state) {
  (void)state;
  if (strstr(kvp_build_info(), "redis=on") == NULL) {
    kvp_store *s = (kvp_store *)&s;
    assert_kvp_status(kvp_store_create_redis("redis://127.0.0.1:6379", NULL, &s), KVP_ERR_UNSUPPORTED,
                      "built without Redis");
    assert_null(s);
    return;
  }
  static const char *const bad[] = {
      "",                          "http://127.0.0.1:6379",      "redis://",
      "redis://127.0.0.1",         "redis://127.0.0.1:",         "redis://:6379",
      "redis://127.0.0.1:0",       "redis://127.0.0.1:65536",    "redis://127.0.0.1:63a9",
      "redis://127.0.0.1:6379/",   "redis://127.0.0.1:6379/x",   "redis://h:1,h:2",
      "redis://127.0.0.1:6379?x=1", "redis+cluster://h:1/0",     "redis+cluster://h:1,,h:2",
      "redis+cluster://h:1,",      "redis+cluster://",           "redis://127.0.0.1:6379/99999999999",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    kvp_store *s = (kvp_store *)&s;
    assert_kvp_status(kvp_store_create_redis(bad[i], NULL, &s), KVP_ERR_INVALID_ARGUMENT, "Redis URL");
    assert_null(s);
  }
  /* unknown flags */
  kvp_store_options o = KVP_STORE_OPTIONS_INIT;
  o.flags = KVP_STORE_FLAG_NO_SYNC;
  kvp_store *s = (kvp_store *)&s;
  assert_kvp_status(kvp_store_create_redis("redis://127.0.0.1:6379", &o, &s), KVP_ERR_INVALID_ARGUMENT, "flags");
  assert_null(s);
  /* nobody listens on port 1: refused, a status naming the server */
  s = (kvp_store *)&s;
  assert_kvp_status(kvp_store_create_redis("redis://127.0.0.1:1", NULL, &s), KVP_ERR_IO, "127.0.0.1:1");
  assert_null(s);
  assert_kvp_status(kvp_store_create_redis("redis+cluster://127.0.0.1:1,127.0.0.1:2", NULL, &s), KVP_ERR_IO,
                    "CLUSTER SLOTS");
  assert_null(s);
}

/* The memory and directory stores ignore timeout_ms (network stores only). */
static void test_store_redis__timeout_ignored_elsewhere(void **state) {
  (void)state;
  kvp_store_options o = KVP_STORE_OPTIONS_INIT;
  o.timeout_ms = 5;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create_memory(1 << 16, &o, &s));
  kvp_test_store_put(s, 1, 100);
  kvp_test_store_expect_block(s, 1, 100);
  assert_kvp_ok(kvp_store_destroy(s));
}

static void round_trip(const char *url, const char *prefix) {
  kvp_store *s = open_store(url, prefix, 0);
  for (uint32_t k = 0; k < 64; ++k) kvp_test_store_put(s, k, 1 + k * 61 % 4000);
  for (uint32_t k = 0; k < 64; ++k) kvp_test_store_expect_block(s, k, 1 + k * 61 % 4000);
  kvp_test_store_put(s, 0, 0); /* an empty block, replacing */
  kvp_test_store_expect_block(s, 0, 0);
  /* exists: one batch, present and absent keys mixed */
  kvp_store_key keys[80];
  uint8_t found[80];
  for (uint32_t i = 0; i < 80; ++i) keys[i] = kvp_test_store_key(i);
  assert_kvp_ok(kvp_store_exists(s, keys, 80, found));
  for (uint32_t i = 0; i < 80; ++i) assert_int_equal(found[i], i < 64);
  /* too small a buffer: the size, nothing written */
  uint8_t b[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  size_t got = 0;
  const kvp_store_key k5 = kvp_test_store_key(5);
  assert_kvp_status(kvp_store_get(s, &k5, b, 4, &got), KVP_ERR_BUFFER_TOO_SMALL, "capacity");
  assert_int_equal(got, 1 + 5 * 61);
  assert_int_equal(b[0], 1);
  /* remove */
  assert_kvp_ok(kvp_store_remove(s, &k5));
  expect_missing(s, 5);
  assert_kvp_status(kvp_store_remove(s, &k5), KVP_ERR_NOT_FOUND, "no block");
  /* listing: every key but 5, a few at a time and in one go */
  expect_listing(s, 64, 5, 7);
  expect_listing(s, 64, 5, 64);
  /* another prefix is another store */
  kvp_store *other = open_store(url, "other:", 0);
  expect_missing(other, 6);
  uint64_t cursor = 0;
  size_t listed = 9;
  kvp_store_key one[4];
  do {
    assert_kvp_ok(kvp_store_list(other, &cursor, one, 4, &listed));
    assert_int_equal(listed, 0);
  } while (cursor != 0);
  assert_kvp_ok(kvp_store_destroy(other));
  /* scrub: every value checked, none damaged */
  kvp_store_scrub_report r = KVP_STORE_SCRUB_REPORT_INIT;
  assert_kvp_ok(kvp_store_scrub(s, &r));
  assert_int_equal(r.blocks_checked, 63);
  assert_int_equal(r.blocks_damaged, 0);
  kvp_store_stats st = KVP_STORE_STATS_INIT;
  assert_kvp_ok(kvp_store_get_stats(s, &st));
  assert_int_equal(st.blocks, -1);
  assert_int_equal(st.bytes, -1);
  assert_int_equal(st.max_bytes, -1);
  assert_int_equal(st.puts, 65);
  assert_int_equal(st.misses, 1);
  assert_int_equal(st.errors, 0);
  assert_int_equal(st.evictions, 0);
  for (uint32_t k = 0; k < 64; ++k) {
    const kvp_store_key kk = kvp_test_store_key(k);
    if (k != 5) assert_kvp_ok(kvp_store_remove(s, &kk));
  }
  assert_kvp_ok(kvp_store_scrub(s, &r));
  assert_int_equal(r.blocks_checked, 0);
  assert_kvp_ok(kvp_store_destroy(s));
}

static void test_store_redis__round_trip_single(void **state) {
  (void)state;
  round_trip(need("KVP_TEST_REDIS_URL"), "rt:");
  /* a database number */
  char url[256];
  snprintf(url, sizeof url, "%s/3", need("KVP_TEST_REDIS_URL"));
  kvp_store *s = open_store(url, "db3:", 0);
  kvp_test_store_put(s, 1, 10);
  kvp_test_store_expect_block(s, 1, 10);
  kvp_store *s0 = open_store(need("KVP_TEST_REDIS_URL"), "db3:", 0);
  expect_missing(s0, 1);
  assert_kvp_ok(kvp_store_destroy(s0));
  assert_kvp_ok(kvp_store_destroy(s));
}

/* The ports of the cluster URL's three nodes. */
static void cluster_ports(int *ports) {
  const char *p = strstr(need("KVP_TEST_REDIS_CLUSTER_URL"), "//") + 2;
  for (int i = 0; i < 3; ++i) {
    p = strchr(p, ':') + 1;
    ports[i] = atoi(p);
  }
}

/* How many keys of `prefix` a node holds. */
static long long keys_on(int port, const char *prefix) {
  redisContext *c = raw_connect(port);
  long long n = 0;
  char cursor[32] = "0";
  do {
    redisReply *r = raw(c, "SCAN %s MATCH %s* COUNT 1000", cursor, prefix);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
    n += (long long)r->element[1]->elements;
    freeReplyObject(r);
  } while (strcmp(cursor, "0") != 0);
  redisFree(c);
  return n;
}

static void test_store_redis__round_trip_cluster(void **state) {
  (void)state;
  const char *url = need("KVP_TEST_REDIS_CLUSTER_URL");
  kvp_store *s = open_store(url, "spread:", 0);
  for (uint32_t k = 0; k < 64; ++k) kvp_test_store_put(s, k, 100);
  int ports[3];
  cluster_ports(ports);
  long long total = 0;
  for (int i = 0; i < 3; ++i) {
    const long long n = keys_on(ports[i], "spread:");
    assert_true(n > 0); /* every master holds some */
    total += n;
  }
  assert_int_equal(total, 64);
  kvp_store_scrub_report r = KVP_STORE_SCRUB_REPORT_INIT;
  assert_kvp_ok(kvp_store_scrub(s, &r)); /* walks every master */
  assert_int_equal(r.blocks_checked, 64);
  assert_kvp_ok(kvp_store_destroy(s));
  round_trip(url, "crt:");
}

/* Which port serves a slot, from CLUSTER SLOTS asked at `port`. */
static int owner_of(int port, long long slot) {
  redisContext *c = raw_connect(port);
  redisReply *r = raw(c, "CLUSTER SLOTS");
  int owner = 0;
  for (size_t i = 0; i < r->elements; ++i) {
    redisReply *e = r->element[i];
    if (e->element[0]->integer <= slot && slot <= e->element[1]->integer) owner = (int)e->element[2]->element[1]->integer;
  }
  freeReplyObject(r);
  redisFree(c);
  return owner;
}

static void node_id(int port, char *id, size_t cap) {
  redisContext *c = raw_connect(port);
  redisReply *r = raw(c, "CLUSTER MYID");
  snprintf(id, cap, "%s", r->str);
  freeReplyObject(r);
  redisFree(c);
}

/* A slot moves from one master to another while the store uses it: keys half migrated (ASK for
 * the moved ones, a new key written during the migration lands on the target), then the slot
 * assigned to the target everywhere (MOVED): every block is found with its bytes. */
static void test_store_redis__resharding(void **state) {
  (void)state;
  const char *url = need("KVP_TEST_REDIS_CLUSTER_URL");
  int ports[3];
  cluster_ports(ports);
  kvp_store *s = open_store(url, "{moving}:", 0); /* a hash tag: every key in one slot */
  for (uint32_t k = 0; k < 20; ++k) kvp_test_store_put(s, k, 500);
  redisContext *c0 = raw_connect(ports[0]);
  redisReply *r = raw(c0, "CLUSTER KEYSLOT {moving}:");
  const long long slot = r->integer;
  freeReplyObject(r);
  redisFree(c0);
  const int src = owner_of(ports[0], slot);
  const int dst = src == ports[0] ? ports[1] : ports[0];
  char src_id[64], dst_id[64];
  node_id(src, src_id, sizeof src_id);
  node_id(dst, dst_id, sizeof dst_id);
  redisContext *cs = raw_connect(src), *cd = raw_connect(dst);
  freeReplyObject(raw(cd, "CLUSTER SETSLOT %lld IMPORTING %s", slot, src_id));
  freeReplyObject(raw(cs, "CLUSTER SETSLOT %lld MIGRATING %s", slot, dst_id));
  /* migrate the first 10 keys */
  for (uint32_t k = 0; k < 10; ++k) {
    char name[64];
    const kvp_store_key kk = kvp_test_store_key(k);
    name_of("{moving}:", &kk, name, sizeof name);
    r = raw(cs, "MIGRATE 127.0.0.1 %d %s 0 5000", dst, name);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
  }
  for (uint32_t k = 0; k < 20; ++k) kvp_test_store_expect_block(s, k, 500); /* the first 10 through ASK */
  kvp_test_store_put(s, 100, 300);                                           /* new: ASK to the target */
  kvp_test_store_expect_block(s, 100, 300);
  kvp_store_key keys[21];
  uint8_t found[21];
  for (uint32_t k = 0; k < 20; ++k) keys[k] = kvp_test_store_key(k);
  keys[20] = kvp_test_store_key(100);
  assert_kvp_ok(kvp_store_exists(s, keys, 21, found));
  for (int i = 0; i < 21; ++i) assert_int_equal(found[i], 1);
  /* the rest, then the slot is the target's */
  for (uint32_t k = 10; k < 20; ++k) {
    char name[64];
    const kvp_store_key kk = kvp_test_store_key(k);
    name_of("{moving}:", &kk, name, sizeof name);
    freeReplyObject(raw(cs, "MIGRATE 127.0.0.1 %d %s 0 5000", dst, name));
  }
  for (int i = 0; i < 3; ++i) {
    redisContext *c = raw_connect(ports[i]);
    freeReplyObject(raw(c, "CLUSTER SETSLOT %lld NODE %s", slot, dst_id));
    redisFree(c);
  }
  redisFree(cs);
  redisFree(cd);
  for (uint32_t k = 0; k < 20; ++k) kvp_test_store_expect_block(s, k, 500); /* MOVED: the map reloaded */
  kvp_test_store_expect_block(s, 100, 300);
  assert_int_equal(keys_on(dst, "{moving}:"), 21);
  kvp_store_stats st = KVP_STORE_STATS_INIT;
  assert_kvp_ok(kvp_store_get_stats(s, &st));
  assert_int_equal(st.errors, 0);
  assert_kvp_ok(kvp_store_destroy(s));
}

/* Once the server answers again: polls kvp_store_exists until the store stops skipping it after
 * its timeouts (at most 10 s). Returns the failed polls (each counts in the store's errors). */
static int wait_until_tried(kvp_store *s) {
  const kvp_store_key k = kvp_test_store_key(0);
  uint8_t found = 0;
  for (int i = 0; i < 200; ++i) {
    if (kvp_store_exists(s, &k, 1, &found) == KVP_OK) return i;
    usleep(50000);
  }
  fail_msg("the store still fails 10 s after the server continued: %s", kvp_last_error_message());
  return -1;
}

/* A server stopped (SIGSTOP) answers nothing: every call fails within the timeout with an I/O
 * status naming it (after the first timeout without trying), and works again once it continues;
 * killed, the same (refused at once), and after a restart it works again (empty: no persistence). */
static void test_store_redis__stopped_killed_restarted(void **state) {
  (void)state;
  const char *url = need("KVP_TEST_REDIS_URL");
  char where[64];
  snprintf(where, sizeof where, "127.0.0.1:%d", url_port(url));
  kvp_store *s = open_store(url, "faults:", 100);
  kvp_test_store_put(s, 1, 100);
  pid_t pid = single_pid();
  assert_int_equal(kill(pid, SIGSTOP), 0);
  uint8_t b[256];
  size_t got = 0;
  const kvp_store_key k1 = kvp_test_store_key(1);
  assert_kvp_status(kvp_store_get(s, &k1, b, sizeof b, &got), KVP_ERR_IO, "no answer within 100 ms");
  assert_kvp_status(kvp_store_put(s, &k1, b, 10), KVP_ERR_IO, where);
  uint8_t found = 0;
  assert_kvp_status(kvp_store_exists(s, &k1, 1, &found), KVP_ERR_IO, where);
  assert_int_equal(kill(pid, SIGCONT), 0);
  const int polls = wait_until_tried(s);
  /* the put that timed out may or may not have happened: either block is whole */
  assert_kvp_ok(kvp_store_get(s, &k1, b, sizeof b, &got));
  assert_true(got == 100 || got == 10);
  kvp_test_store_put(s, 1, 100);
  kvp_test_store_expect_block(s, 1, 100);
  /* killed between calls */
  assert_int_equal(kill(pid, SIGKILL), 0);
  usleep(100000);
  assert_kvp_status(kvp_store_get(s, &k1, b, sizeof b, &got), KVP_ERR_IO, where);
  assert_kvp_status(kvp_store_put(s, &k1, b, 10), KVP_ERR_IO, where);
  kvp_store_scrub_report r = KVP_STORE_SCRUB_REPORT_INIT;
  assert_kvp_status(kvp_store_scrub(s, &r), KVP_ERR_IO, where);
  kvp_store *none = (kvp_store *)&none;
  assert_kvp_status(kvp_store_create_redis(url, NULL, &none), KVP_ERR_IO, where);
  assert_null(none);
  restart_single();
  expect_missing(s, 1);
  kvp_test_store_put(s, 1, 100);
  kvp_test_store_expect_block(s, 1, 100);
  kvp_store_stats st = KVP_STORE_STATS_INIT;
  assert_kvp_ok(kvp_store_get_stats(s, &st));
  assert_int_equal(st.errors, 6 + polls); /* get, put, exists stopped; get, put, scrub killed */
  assert_kvp_ok(kvp_store_destroy(s));
}

/* After a timeout the server is skipped: calls fail at once, naming it, for the timeout, then
 * twice as long after the next timeout in a row; an answer ends it (the next timeout is the first
 * again). A refused connection is not a timeout: tried at every call. */
static void test_store_redis__silent_server_is_skipped_after_a_timeout(void **state) {
  (void)state;
  const char *url = need("KVP_TEST_REDIS_URL");
  char where[64];
  snprintf(where, sizeof where, "Redis 127.0.0.1:%d: skipped", url_port(url));
  kvp_store *s = open_store(url, "skip:", 300);
  kvp_test_store_put(s, 1, 100);
  const pid_t pid = single_pid();
  uint8_t b[256];
  size_t got = 0;
  uint8_t found = 0;
  const kvp_store_key k1 = kvp_test_store_key(1);
  assert_int_equal(kill(pid, SIGSTOP), 0);
  assert_kvp_status(kvp_store_get(s, &k1, b, sizeof b, &got), KVP_ERR_IO, "no answer within 300 ms");
  assert_kvp_status(kvp_store_get(s, &k1, b, sizeof b, &got), KVP_ERR_IO, where);
  assert_kvp_status(kvp_store_exists(s, &k1, 1, &found), KVP_ERR_IO, "1 time(s) in a row");
  assert_kvp_status(kvp_store_put(s, &k1, b, 10), KVP_ERR_IO, where);
  usleep(400000); /* past the first 300 ms: tried again, times out again, skipped for 600 ms */
  assert_kvp_status(kvp_store_get(s, &k1, b, sizeof b, &got), KVP_ERR_IO, "no answer within 300 ms");
  assert_kvp_status(kvp_store_get(s, &k1, b, sizeof b, &got), KVP_ERR_IO, "2 time(s) in a row");
  assert_int_equal(kill(pid, SIGCONT), 0);
  int polls = wait_until_tried(s);
  kvp_test_store_expect_block(s, 1, 100);
  /* an answer reset the count: the next timeout is the first */
  assert_int_equal(kill(pid, SIGSTOP), 0);
  assert_kvp_status(kvp_store_get(s, &k1, b, sizeof b, &got), KVP_ERR_IO, "no answer within 300 ms");
  assert_kvp_status(kvp_store_get(s, &k1, b, sizeof b, &got), KVP_ERR_IO, "1 time(s) in a row");
  assert_int_equal(kill(pid, SIGCONT), 0);
  polls += wait_until_tried(s);
  kvp_store_stats st = KVP_STORE_STATS_INIT;
  assert_kvp_ok(kvp_store_get_stats(s, &st));
  assert_int_equal(st.errors, 8 + polls); /* every failed call counts, skipped or not */
  assert_kvp_ok(kvp_store_destroy(s));
  /* killed: refused at every call, never skipped; after a restart it works at once */
  s = open_store(url, "skip:", 300);
  assert_int_equal(kill(single_pid(), SIGKILL), 0);
  usleep(100000);
  assert_kvp_status(kvp_store_get(s, &k1, b, sizeof b, &got), KVP_ERR_IO, "no reply"); /* its connection */
  for (int i = 0; i < 3; ++i) {
    assert_kvp_status(kvp_store_get(s, &k1, b, sizeof b, &got), KVP_ERR_IO, "cannot connect: Connection refused");
  }
  restart_single();
  expect_missing(s, 1);
  assert_kvp_ok(kvp_store_destroy(s));
}

/* The process id of the Redis server on `port` (INFO server). */
static pid_t pid_of_port(int port) {
  redisContext *c = raw_connect(port);
  redisReply *r = raw(c, "INFO server");
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  const char *at = strstr(r->str, "process_id:");
  assert_non_null(at);
  const pid_t pid = (pid_t)atoi(at + strlen("process_id:"));
  freeReplyObject(r);
  redisFree(c);
  return pid;
}

/* The port of the cluster master that holds key k of `prefix` (raw EXISTS on each). */
static int port_holding(const int *ports, const char *prefix, uint32_t k) {
  char name[128];
  const kvp_store_key kk = kvp_test_store_key(k);
  name_of(prefix, &kk, name, sizeof name);
  for (int i = 0; i < 3; ++i) {
    redisContext *c = raw_connect(ports[i]);
    redisReply *r = raw(c, "EXISTS %s", name);
    const int here = r->type == REDIS_REPLY_INTEGER && r->integer == 1; /* elsewhere: a MOVED error */
    freeReplyObject(r);
    redisFree(c);
    if (here) return ports[i];
  }
  fail_msg("no master holds the key");
  return -1;
}

/* In a cluster the skip is per node: with one master stopped, its keys fail (the first call after
 * a timeout, the next at once, naming the node), while the keys of the other masters are served
 * as before; once it continues, its keys are served again. */
static void test_store_redis__cluster_skips_only_the_silent_node(void **state) {
  (void)state;
  int ports[3];
  cluster_ports(ports);
  kvp_store *s = open_store(need("KVP_TEST_REDIS_CLUSTER_URL"), "nodeskip:", 300);
  for (uint32_t k = 0; k < 24; ++k) kvp_test_store_put(s, k, 200);
  const int stopped = port_holding(ports, "nodeskip:", 0);
  uint32_t elsewhere = 1;
  while (port_holding(ports, "nodeskip:", elsewhere) == stopped) ++elsewhere;
  char skipped[64];
  snprintf(skipped, sizeof skipped, "Redis 127.0.0.1:%d: skipped", stopped);
  const pid_t pid = pid_of_port(stopped);
  const kvp_store_key k0 = kvp_test_store_key(0);
  uint8_t b[256];
  size_t got = 0;
  assert_int_equal(kill(pid, SIGSTOP), 0);
  assert_kvp_status(kvp_store_get(s, &k0, b, sizeof b, &got), KVP_ERR_IO, "no answer within 300 ms");
  assert_kvp_status(kvp_store_get(s, &k0, b, sizeof b, &got), KVP_ERR_IO, skipped);
  kvp_test_store_expect_block(s, elsewhere, 200); /* another master's key, while the node is skipped */
  assert_kvp_status(kvp_store_get(s, &k0, b, sizeof b, &got), KVP_ERR_IO, skipped);
  assert_int_equal(kill(pid, SIGCONT), 0);
  int tries = 0;
  while (kvp_store_get(s, &k0, b, sizeof b, &got) != KVP_OK) {
    assert_true(++tries < 200); /* 10 s */
    usleep(50000);
  }
  for (uint32_t k = 0; k < 24; ++k) kvp_test_store_expect_block(s, k, 200);
  assert_kvp_ok(kvp_store_destroy(s));
}

typedef struct {
  kvp_store *store;
  kvp_status last;
  int calls;
} hammer;

/* Puts and gets large blocks until a call fails. */
static void *hammer_run(void *arg) {
  hammer *h = (hammer *)arg;
  const size_t n = 4u << 20;
  uint8_t *b = (uint8_t *)malloc(n);
  memset(b, 3, n); /* what the bytes are does not matter here */
  const kvp_store_key k = kvp_test_store_key(9);
  size_t got = 0;
  for (h->calls = 0;; ++h->calls) {
    h->last = h->calls % 2 == 0 ? kvp_store_put(h->store, &k, b, n) : kvp_store_get(h->store, &k, b, n, &got);
    if (h->last != KVP_OK) break;
  }
  free(b);
  return NULL;
}

/* Killed during calls: the call in flight (a put or a get of 4 MiB) fails with an I/O status. */
static void test_store_redis__killed_during_calls(void **state) {
  (void)state;
  const char *url = need("KVP_TEST_REDIS_URL");
  hammer h = {open_store(url, "hammer:", 500), KVP_OK, 0};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, hammer_run, &h), 0);
  usleep(300000);
  assert_int_equal(kill(single_pid(), SIGKILL), 0);
  assert_int_equal(pthread_join(t, NULL), 0);
  assert_int_equal(h.last, KVP_ERR_IO);
  restart_single();
  kvp_test_store_put(h.store, 2, 50);
  kvp_test_store_expect_block(h.store, 2, 50);
  assert_kvp_ok(kvp_store_destroy(h.store));
}

/* Writes `len` bytes of a damaged value under the name of key k. */
static void set_raw(int port, const char *prefix, uint32_t k, const void *v, size_t len) {
  char name[128];
  const kvp_store_key kk = kvp_test_store_key(k);
  name_of(prefix, &kk, name, sizeof name);
  redisContext *c = raw_connect(port);
  freeReplyObject(raw(c, "SET %s %b", name, v, len));
  redisFree(c);
}

static size_t get_raw(int port, const char *prefix, uint32_t k, uint8_t *v, size_t cap) {
  char name[128];
  const kvp_store_key kk = kvp_test_store_key(k);
  name_of(prefix, &kk, name, sizeof name);
  redisContext *c = raw_connect(port);
  redisReply *r = raw(c, "GET %s", name);
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  assert_true(r->len <= cap);
  memcpy(v, r->str, r->len);
  const size_t n = r->len;
  freeReplyObject(r);
  redisFree(c);
  return n;
}

/* A value truncated or bit-flipped behind the store's back: get fails with a FORMAT status and
 * the value is gone; scrub finds the others. */
static void test_store_redis__damaged_values(void **state) {
  (void)state;
  const char *url = need("KVP_TEST_REDIS_URL");
  const int port = url_port(url);
  kvp_store *s = open_store(url, "dmg:", 0);
  for (uint32_t k = 1; k <= 6; ++k) kvp_test_store_put(s, k, 1000);
  uint8_t v[2048];
  size_t n = get_raw(port, "dmg:", 1, v, sizeof v);
  assert_int_equal(n, 48 + 1000); /* the frame: header, block */
  set_raw(port, "dmg:", 1, v, n - 1);         /* truncated */
  v[100] ^= 0x10;
  set_raw(port, "dmg:", 2, v, n);             /* key 1's flipped frame under key 2: wrong key */
  n = get_raw(port, "dmg:", 3, v, sizeof v);
  v[600] ^= 0x01;
  set_raw(port, "dmg:", 3, v, n);             /* bit-flipped block */
  set_raw(port, "dmg:", 4, "short", 5);       /* shorter than a header */
  uint8_t b[2048];
  size_t got = 0;
  const kvp_store_key k1 = kvp_test_store_key(1), k2 = kvp_test_store_key(2), k3 = kvp_test_store_key(3);
  assert_kvp_status(kvp_store_get(s, &k1, b, sizeof b, &got), KVP_ERR_FORMAT_TRUNCATED, "deleted");
  assert_kvp_status(kvp_store_get(s, &k2, b, sizeof b, &got), KVP_ERR_FORMAT_CORRUPT, "dmg:");
  assert_kvp_status(kvp_store_get(s, &k3, b, sizeof b, &got), KVP_ERR_FORMAT_CHECKSUM, "checksum");
  for (uint32_t k = 1; k <= 3; ++k) expect_missing(s, k);
  /* scrub: key 4 damaged, 5 and 6 whole */
  n = get_raw(port, "dmg:", 5, v, sizeof v);
  v[n - 1] ^= 0x80;
  set_raw(port, "dmg:", 6, v, n); /* key 5's bytes, a flipped last byte, under 6 */
  kvp_store_scrub_report r = KVP_STORE_SCRUB_REPORT_INIT;
  assert_kvp_ok(kvp_store_scrub(s, &r));
  assert_int_equal(r.blocks_checked, 3);
  assert_int_equal(r.blocks_damaged, 2);
  assert_int_equal(r.bytes_freed, 5 + (int64_t)n);
  expect_missing(s, 4);
  expect_missing(s, 6);
  kvp_test_store_expect_block(s, 5, 1000);
  assert_kvp_ok(kvp_store_destroy(s));
}

/* ---- a pool whose tier is Redis ------------------------------------------------------------ */

#define LAYERS 2
#define HEADS 2
#define HDIM 64
#define PS 4
#define NP 8
#define MAXLEN 64

static kvp_cache *make_cache(void) {
  kvp_config cfg = kvp_test_config_len(LAYERS, HEADS, HDIM, PS, NP, KVP_DTYPE_F32, KVP_LAYOUT_V3, MAXLEN);
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  return c;
}

/* Prompt A (13 tokens: 3 full pages) computed and freed, then B fills the pool: A's pages go to
 * the tier. A new cache and pool (another process, in effect) restores them from Redis. */
static void test_store_redis__pool_restores_what_it_evicted(void **state) {
  (void)state;
  const char *url = need("KVP_TEST_REDIS_CLUSTER_URL");
  kvp_store *store = open_store(url, "pool:", 0);
  int32_t a[13], b[7 * PS];
  for (int i = 0; i < 13; ++i) a[i] = 1000 + i;
  for (int i = 0; i < 7 * PS; ++i) b[i] = 5000 + i;
  kvp_cache *c = make_cache();
  kvp_pool *p = NULL;
  assert_kvp_ok(kvp_pool_create(c, NULL, &p));
  assert_kvp_ok(kvp_pool_add_store(p, store));
  assert_kvp_ok(kvp_pool_free_sequence(p, kvp_test_run_prompt(p, c, a, 13, 7, 0, NULL)));
  assert_kvp_ok(kvp_pool_free_sequence(p, kvp_test_run_prompt(p, c, b, 7 * PS, 7, 0, NULL)));
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0)); /* Redis puts run on the pool's writer thread */
  kvp_pool_tier_stats ts = KVP_POOL_TIER_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_tier_stats(p, 0, &ts));
  assert_int_equal(ts.blocks_written, 3);
  assert_int_equal(ts.errors, 0);
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_cache_destroy(c));

  c = make_cache();
  assert_kvp_ok(kvp_pool_create(c, NULL, &p));
  assert_kvp_ok(kvp_pool_add_store(p, store));
  size_t reused = 0;
  kvp_seq_id s = kvp_test_run_prompt(p, c, a, 13, 7, 0, &reused);
  assert_int_equal(reused, 3 * PS);
  kvp_test_expect_prompt_kv(p, c, s, a, 3);
  assert_kvp_ok(kvp_pool_get_tier_stats(p, 0, &ts));
  assert_int_equal(ts.hits, 3);
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_cache_destroy(c));

  /* damage the second page's block in Redis (a flipped bit in its K/V): a third pool restores
   * the first page only and computes the rest; nothing wrong reaches the cache */
  uint64_t keys_seen = 0;
  int ports[3];
  cluster_ports(ports);
  for (int i = 0; i < 3; ++i) keys_seen += (uint64_t)keys_on(ports[i], "pool:");
  assert_true(keys_seen >= 3);
  c = make_cache();
  assert_kvp_ok(kvp_pool_create(c, NULL, &p));
  assert_kvp_ok(kvp_pool_add_store(p, store));
  /* find A's page-1 block: the one whose tokens are a[4..7] (the block holds the token ids) */
  int damaged = 0;
  for (int i = 0; i < 3 && !damaged; ++i) {
    redisContext *rc = raw_connect(ports[i]);
    redisReply *r = raw(rc, "KEYS pool:*");
    for (size_t j = 0; j < r->elements && !damaged; ++j) {
      redisReply *v = raw(rc, "GET %s", r->element[j]->str);
      const int32_t want[4] = {1004, 1005, 1006, 1007};
      /* the block's token ids follow the frame header (48) and the block header (72) */
      if (v->len > 48 + 72 + 16 && memcmp(v->str + 48 + 72, want, sizeof want) == 0) {
        v->str[v->len - 100] ^= 0x04;
        freeReplyObject(raw(rc, "SET %s %b", r->element[j]->str, v->str, v->len));
        damaged = 1;
      }
      freeReplyObject(v);
    }
    freeReplyObject(r);
    redisFree(rc);
  }
  assert_true(damaged);
  s = kvp_test_run_prompt(p, c, a, 13, 7, 0, &reused);
  assert_int_equal(reused, 1 * PS); /* page 0 from Redis; 1 damaged; 2 follows it */
  kvp_test_expect_prompt_kv(p, c, s, a, 3);
  assert_kvp_ok(kvp_pool_get_tier_stats(p, 0, &ts));
  assert_int_equal(ts.hits, 1);
  assert_true(ts.errors + ts.rejected >= 1);
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_cache_destroy(c));
  assert_kvp_ok(kvp_store_destroy(store));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_store_redis__bad_urls),
      cmocka_unit_test(test_store_redis__timeout_ignored_elsewhere),
      cmocka_unit_test(test_store_redis__round_trip_single),
      cmocka_unit_test(test_store_redis__round_trip_cluster),
      cmocka_unit_test(test_store_redis__resharding),
      cmocka_unit_test(test_store_redis__damaged_values),
      cmocka_unit_test(test_store_redis__pool_restores_what_it_evicted),
      cmocka_unit_test(test_store_redis__stopped_killed_restarted),
      cmocka_unit_test(test_store_redis__silent_server_is_skipped_after_a_timeout),
      cmocka_unit_test(test_store_redis__cluster_skips_only_the_silent_node),
      cmocka_unit_test(test_store_redis__killed_during_calls),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
