/* The storage tiers of `kvp demo` (--disk DIR, --redis URL): a memory tier, then a directory
 * store, then a Redis store, all written by the pool with the pages it evicts; at the end every
 * cached prefix page is persisted too, so that a second run (a restarted process, or another
 * server of the same fleet on the same Redis) restores its prompts' pages instead of computing
 * them. The report says where each reused prompt token came from and what that saved. */
#include <inttypes.h>
#include <stdio.h>

#include "demo.h"
#include "kvp_tool.h"

#define DEMO_MEMORY_TIER_BYTES (16u << 20)
#define DEMO_DISK_TIER_BYTES (256u << 20)

static int add_tier(demo_tiers *t, kvp_pool *pool, kvp_store *store, const char *name) {
  t->stores[t->count] = store;
  t->names[t->count++] = name;
  if (kvp_pool_add_store(pool, store) == KVP_OK) return 0;
  fprintf(stderr, "kvp demo: adding the %s tier: %s\n", name, kvp_last_error_message());
  return 1;
}

int demo_tiers_open(demo_tiers *t, kvp_pool *pool, const char *disk, const char *redis) {
  kvp_store *s = NULL;
  if (kvp_store_create_memory(DEMO_MEMORY_TIER_BYTES, NULL, &s) != KVP_OK) {
    fprintf(stderr, "kvp demo: memory tier: %s\n", kvp_last_error_message());
    return 1;
  }
  if (add_tier(t, pool, s, "memory") != 0) return 1;
  if (disk != NULL) {
    if (kvp_tool_open_store("kvp demo", disk, DEMO_DISK_TIER_BYTES, 1, &s) != 0 || add_tier(t, pool, s, disk) != 0)
      return 1;
  }
  if (redis != NULL) {
    if (kvp_tool_open_store("kvp demo", redis, 0, 1, &s) != 0 || add_tier(t, pool, s, redis) != 0) return 1;
  }
  return 0;
}

void demo_tiers_close(demo_tiers *t) {
  int i;
  for (i = 0; i < t->count; ++i) kvp_store_destroy(t->stores[i]);
  t->count = 0;
}

/* Persists every cached prefix page, then reports each tier (token_s: the run's compute per
 * prefill token; add_s: its time in kvp_pool_add_sequence). */
int demo_tiers_report(demo_tiers *t, kvp_pool *pool, int64_t reused_tokens, double add_s, double token_s) {
  kvp_pool_tier_stats ts[KVP_POOL_MAX_TIERS];
  int64_t restored = 0;
  const double t0 = kvp_tool_now();
  double flush_s;
  int i;
  if (kvp_pool_flush_tiers(pool, KVP_POOL_FLUSH_CACHED) != KVP_OK) {
    fprintf(stderr, "kvp demo: persisting the cached pages: %s\n", kvp_last_error_message());
    return 1;
  }
  flush_s = kvp_tool_now() - t0;
  for (i = 0; i < t->count; ++i) {
    ts[i].struct_size = sizeof ts[i];
    if (kvp_pool_get_tier_stats(pool, (uint32_t)i, &ts[i]) != KVP_OK) {
      fprintf(stderr, "kvp demo: tier %d: %s\n", i, kvp_last_error_message());
      return 1;
    }
    restored += ts[i].restored_tokens;
  }
  printf("storage tiers: of the %" PRId64 " reused prompt tokens, %" PRId64 " came from the pool's own prefix cache",
         reused_tokens, reused_tokens - restored);
  for (i = 0; i < t->count; ++i) printf(", %" PRId64 " from %s", ts[i].restored_tokens, t->names[i]);
  printf("\n");
  for (i = 0; i < t->count; ++i)
    printf("  tier %d %-24s %5" PRId64 " pages restored, %4" PRId64 " rejected, %5" PRId64 " blocks written (%.1f MiB), "
           "%" PRId64 " dropped, %" PRId64 " store errors\n",
           i, t->names[i], ts[i].hits, ts[i].rejected, ts[i].blocks_written, (double)ts[i].bytes_written / 1048576.0,
           ts[i].dropped, ts[i].errors);
  printf("  cached prefix pages persisted to the tiers at the end in %.1f ms (kvp_pool_flush_tiers)\n", flush_s * 1e3);
  printf("  prefill cost in this run: %.1f us per token (the model's q/k/v and kvp_attention over the tokens of "
         "the steps with prefill rows)\n",
         token_s * 1e6);
  if (restored > 0)
    printf("time to first token saved: %" PRId64 " prompt tokens restored instead of computed: %.1f ms of prefill at "
           "this run's cost per token, while every kvp_pool_add_sequence of the run, restores included, took %.1f ms\n",
           restored, (double)restored * token_s * 1e3, add_s * 1e3);
  return 0;
}
