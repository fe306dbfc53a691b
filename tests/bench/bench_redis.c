/* The Redis store (issue 18): blocks per second and GB/s of kvp_store_put and kvp_store_get of
 * llama3-8b page blocks (32 layers, 8 KV heads x 128, bf16 keys and values: 128 KiB per token)
 * at page sizes 16 (2 MiB blocks) and 128 (16 MiB), against raw hiredis SET and GET of values of
 * the same size on the same server in the same run (the peer: what Redis and the loopback give a
 * client that neither frames nor checks); ratio = store / raw (target >= 0.8). On one server and
 * on a three-master cluster (raw: each value sent to its slot's master, found before timing).
 * Servers: --url redis://HOST:PORT and --cluster redis+cluster://HOST:PORT,...; by default the
 * KVP_TEST_REDIS_URL and KVP_TEST_REDIS_CLUSTER_URL that scripts/bench-redis.sh exports. Each
 * value is written and read once per repeat; best of --repeats (default 3). --quick: fewer blocks. */
#include <hiredis/hiredis.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvpages.h"
#include "bench_support.h"

#define LAYERS 32
#define KV_BYTES_PER_TOKEN_LAYER (2 * 8 * 128 * 2) /* K and V, 8 heads x 128, bf16 */
#define MAX_NODES 16

static void check(kvp_status st, const char *what) {
  if (st != KVP_OK) {
    fprintf(stderr, "bench_redis: %s: %s\n", what, kvp_last_error_message());
    exit(1);
  }
}

/* Raw hiredis connections: one per master, and which master serves each raw key. */
typedef struct raw_conn {
  int nodes;
  redisContext *c[MAX_NODES];
  int port[MAX_NODES];
} raw_conn;

static redisReply *checked_reply(redisContext *c, redisReply *r) {
  if (r == NULL || r->type == REDIS_REPLY_ERROR) {
    fprintf(stderr, "bench_redis: Redis: %s\n", r != NULL ? r->str : c->errstr);
    exit(1);
  }
  return r;
}

static redisReply *cmd(redisContext *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = (redisReply *)redisvCommand(c, fmt, ap);
  va_end(ap);
  return checked_reply(c, r);
}

/* SET name value through hiredis' argv form: the command is built once at its final size (no
 * format parsing, no buffer growth), the fastest way a hiredis client sends a large value. */
static redisReply *set_argv(redisContext *c, const char *name, const uint8_t *value, size_t bytes) {
  const char *argv[3] = {"SET", name, (const char *)value};
  const size_t len[3] = {3, strlen(name), bytes};
  return checked_reply(c, (redisReply *)redisCommandArgv(c, 3, argv, len));
}

/* The HOST:PORT list of a URL (host must be an IPv4 address or a name hiredis resolves). */
static void raw_open(raw_conn *rc, const char *url, int cluster) {
  char host[256];
  int port = 0;
  const char *p = strstr(url, "//") + 2;
  if (sscanf(p, "%255[^:]:%d", host, &port) != 2) {
    fprintf(stderr, "bench_redis: cannot read HOST:PORT in %s\n", url);
    exit(1);
  }
  memset(rc, 0, sizeof *rc);
  redisContext *seed = redisConnect(host, port);
  if (seed == NULL || seed->err) {
    fprintf(stderr, "bench_redis: cannot connect to %s:%d\n", host, port);
    exit(1);
  }
  if (!cluster) {
    rc->nodes = 1;
    rc->c[0] = seed;
    rc->port[0] = port;
    return;
  }
  redisReply *r = cmd(seed, "CLUSTER SLOTS");
  for (size_t i = 0; i < r->elements && rc->nodes < MAX_NODES; ++i) {
    const redisReply *m = r->element[i]->element[2];
    const int mp = (int)m->element[1]->integer;
    int known = 0;
    for (int n = 0; n < rc->nodes; ++n) known |= rc->port[n] == mp;
    if (known) continue;
    rc->port[rc->nodes] = mp;
    rc->c[rc->nodes++] = redisConnect(m->element[0]->len > 0 ? m->element[0]->str : host, mp);
  }
  freeReplyObject(r);
  redisFree(seed);
}

/* The connection serving `key` (a cluster: its slot's master, asked once, before timing). */
static redisContext *raw_route(raw_conn *rc, const char *key) {
  if (rc->nodes == 1) return rc->c[0];
  redisReply *s = cmd(rc->c[0], "CLUSTER KEYSLOT %s", key);
  const long long slot = s->integer;
  freeReplyObject(s);
  redisReply *r = cmd(rc->c[0], "CLUSTER SLOTS");
  int port = 0;
  for (size_t i = 0; i < r->elements; ++i)
    if (r->element[i]->element[0]->integer <= slot && slot <= r->element[i]->element[1]->integer)
      port = (int)r->element[i]->element[2]->element[1]->integer;
  freeReplyObject(r);
  for (int n = 0; n < rc->nodes; ++n)
    if (rc->port[n] == port) return rc->c[n];
  fprintf(stderr, "bench_redis: no connection to the master of slot %lld\n", slot);
  exit(1);
}

static kvp_store_key key_of(int i) {
  kvp_store_key k;
  for (int b = 0; b < 16; ++b) k.bytes[b] = (uint8_t)(i * 131 + b * 7 + (i >> 8));
  return k;
}

typedef struct result {
  double put_s, get_s;
} result;

static result bench_store(kvp_store *s, int blocks, uint8_t *buf, size_t bytes) {
  result r;
  double t0 = bench_now_s();
  for (int i = 0; i < blocks; ++i) {
    const kvp_store_key k = key_of(i);
    check(kvp_store_put(s, &k, buf, bytes), "kvp_store_put");
  }
  r.put_s = bench_now_s() - t0;
  t0 = bench_now_s();
  for (int i = 0; i < blocks; ++i) {
    const kvp_store_key k = key_of(i);
    size_t got = 0;
    check(kvp_store_get(s, &k, buf, bytes, &got), "kvp_store_get");
    if (got != bytes) {
      fprintf(stderr, "bench_redis: got %zu bytes, want %zu\n", got, bytes);
      exit(1);
    }
  }
  r.get_s = bench_now_s() - t0;
  for (int i = 0; i < blocks; ++i) {
    const kvp_store_key k = key_of(i);
    check(kvp_store_remove(s, &k), "kvp_store_remove");
  }
  return r;
}

static result bench_raw(raw_conn *rc, int blocks, uint8_t *buf, size_t bytes) {
  redisContext *to[4096];
  char names[4096][32];
  for (int i = 0; i < blocks; ++i) {
    snprintf(names[i], sizeof names[i], "raw:%d", i);
    to[i] = raw_route(rc, names[i]);
  }
  result r;
  double t0 = bench_now_s();
  for (int i = 0; i < blocks; ++i) freeReplyObject(set_argv(to[i], names[i], buf, bytes));
  r.put_s = bench_now_s() - t0;
  t0 = bench_now_s();
  for (int i = 0; i < blocks; ++i) {
    redisReply *g = cmd(to[i], "GET %s", names[i]);
    if (g->type != REDIS_REPLY_STRING || g->len != bytes) {
      fprintf(stderr, "bench_redis: raw GET returned no value of %zu bytes\n", bytes);
      exit(1);
    }
    memcpy(buf, g->str, bytes); /* a client copies the value out, as kvp_store_get does */
    freeReplyObject(g);
  }
  r.get_s = bench_now_s() - t0;
  for (int i = 0; i < blocks; ++i) freeReplyObject(cmd(to[i], "DEL %s", names[i]));
  return r;
}

static void run(const char *label, const char *url, int cluster, int page_size, int blocks, int repeats) {
  const size_t bytes = (size_t)page_size * LAYERS * KV_BYTES_PER_TOKEN_LAYER;
  uint8_t *buf = (uint8_t *)malloc(bytes);
  for (size_t i = 0; i < bytes; ++i) buf[i] = (uint8_t)bench_rand();
  kvp_store *s = NULL;
  char u[512];
  snprintf(u, sizeof u, "%s?prefix=bench:", url);
  kvp_store_options o = KVP_STORE_OPTIONS_INIT;
  o.timeout_ms = 10000;
  check(kvp_store_create_redis(u, &o, &s), "kvp_store_create_redis");
  raw_conn rc;
  raw_open(&rc, url, cluster);
  result best_s = {1e30, 1e30}, best_r = {1e30, 1e30};
  for (int rep = 0; rep < repeats; ++rep) {
    const result a = bench_store(s, blocks, buf, bytes), b = bench_raw(&rc, blocks, buf, bytes);
    if (a.put_s < best_s.put_s) best_s.put_s = a.put_s;
    if (a.get_s < best_s.get_s) best_s.get_s = a.get_s;
    if (b.put_s < best_r.put_s) best_r.put_s = b.put_s;
    if (b.get_s < best_r.get_s) best_r.get_s = b.get_s;
  }
  const double gb = (double)bytes * blocks / 1e9;
  printf("%-8s %5d %9.1f %6d | %9.0f %7.2f %9.0f %7.2f %5.2f | %9.0f %7.2f %9.0f %7.2f %5.2f\n", label, page_size,
         bytes / 1048576.0, blocks, blocks / best_s.put_s, gb / best_s.put_s, blocks / best_r.put_s, gb / best_r.put_s,
         best_r.put_s / best_s.put_s, blocks / best_s.get_s, gb / best_s.get_s, blocks / best_r.get_s,
         gb / best_r.get_s, best_r.get_s / best_s.get_s);
  for (int n = 0; n < rc.nodes; ++n) redisFree(rc.c[n]);
  check(kvp_store_destroy(s), "kvp_store_destroy");
  free(buf);
}

int main(int argc, char **argv) {
  const char *url = getenv("KVP_TEST_REDIS_URL"), *cluster = getenv("KVP_TEST_REDIS_CLUSTER_URL");
  int quick = 0, repeats = 3;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--quick") == 0) quick = 1;
    else if (strcmp(argv[i], "--url") == 0 && i + 1 < argc) url = argv[++i];
    else if (strcmp(argv[i], "--cluster") == 0 && i + 1 < argc) cluster = argv[++i];
    else if (strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) repeats = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: bench_redis [--quick] [--repeats N] [--url redis://H:P] [--cluster redis+cluster://H:P,...]\n");
      return 2;
    }
  }
  if (url == NULL && cluster == NULL) {
    fprintf(stderr, "bench_redis: no server: run scripts/bench-redis.sh, or give --url / --cluster\n");
    return 2;
  }
  char cpu[128], date[64];
  bench_cpu_model(cpu, sizeof cpu);
  bench_utc_date(date, sizeof date);
  printf("bench_redis: %s, %s, %s\n", cpu, date, kvp_build_info());
  printf("llama3-8b page blocks: %d layers x 8 KV heads x 128, bf16 K and V (%d KiB per token); best of %d\n", LAYERS,
         LAYERS * KV_BYTES_PER_TOKEN_LAYER / 1024, repeats);
  printf("%-8s %5s %9s %6s | %9s %7s %9s %7s %5s | %9s %7s %9s %7s %5s\n", "server", "page", "MiB/block", "blocks",
         "put blk/s", "GB/s", "SET blk/s", "GB/s", "ratio", "get blk/s", "GB/s", "GET blk/s", "GB/s", "ratio");
  const int page_sizes[2] = {16, 128};
  for (int i = 0; i < 2; ++i) {
    const int blocks = (quick ? 64 : 256) * 16 / page_sizes[i]; /* 128 MiB (quick) or 512 MiB per pass */
    if (url != NULL) run("single", url, 0, page_sizes[i], blocks, repeats);
    if (cluster != NULL) run("cluster", cluster, 1, page_sizes[i], blocks, repeats);
  }
  return 0;
}
