/* libFuzzer target for the page pool: the input is a program of pool operations (add_sequence
 * with tokens, salt and flags, append, set_computed, truncate, fork, free_sequence,
 * clear_prefix_cache, get_page_table, get_slots) on a small cache. A shadow model kept here
 * predicts each call's status where the header documents it exactly (unknown or freed ids,
 * lengths past the end or past max_model_length, unknown flags, sequence slots) and allows
 * KVP_ERR_OUT_OF_PAGES where pages may run out. After every operation the pool's invariants
 * hold (kvp_pool_check_invariants) and every live sequence has the model's length and computed
 * watermark; a failed operation changes nothing (pool counters and the sequence's page table
 * are as before). */
#include <stdint.h>
#include <string.h>

#include "harness.h"
#include "kvpages.h"

#define PAGE 4
#define PAGES 14
#define MAX_LEN 32
#define MAX_SEQS 8
#define MAX_TOKENS (MAX_LEN + 8)

static kvp_cache *g_cache;

typedef struct shadow_seq {
  kvp_seq_id id;
  size_t length, computed;
} shadow_seq;

typedef struct model {
  kvp_pool *pool;
  uint32_t max_sequences;
  int no_prefix_cache;
  shadow_seq live[MAX_SEQS];
  int num_live;
  kvp_seq_id stale[16]; /* freed ids, for stale-id calls */
  int num_stale;
} model;

/* What every failure must leave as it was. */
typedef struct snapshot {
  kvp_pool_stats stats;
  int32_t pages[MAX_LEN / PAGE + 1];
  size_t count, length, computed;
} snapshot;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  g_cache = kvp_fuzz_cache(1, 1, 8, PAGE, MAX_LEN, PAGES, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  return 0;
}

static kvp_pool_stats stats_of(const kvp_pool *p) {
  kvp_pool_stats s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  kvp_fuzz_check(kvp_pool_get_stats(p, &s) == KVP_OK, "kvp_pool_get_stats");
  return s;
}

static void take_snapshot(const model *m, kvp_seq_id seq, snapshot *s) {
  memset(s, 0, sizeof *s);
  s->stats = stats_of(m->pool);
  if (kvp_pool_get_sequence_length(m->pool, seq, &s->length, &s->computed) == KVP_OK)
    kvp_fuzz_check(kvp_pool_get_page_table(m->pool, seq, s->pages, MAX_LEN / PAGE + 1, &s->count) == KVP_OK,
                   "kvp_pool_get_page_table of a live sequence");
}

static void check_unchanged(const model *m, kvp_seq_id seq, const snapshot *before, const char *op) {
  snapshot now;
  take_snapshot(m, seq, &now);
  kvp_fuzz_check(memcmp(&now, before, sizeof now) == 0, "failed %s changed the pool", op);
}

static shadow_seq *find_live(model *m, kvp_seq_id id) {
  for (int i = 0; i < m->num_live; ++i)
    if (m->live[i].id.id == id.id) return &m->live[i];
  return NULL;
}

/* A sequence id for the next call: mostly a live one, sometimes a freed one or garbage. */
static kvp_seq_id pick_seq(model *m, kvp_fuzz_reader *r) {
  const uint8_t b = kvp_fuzz_u8(r);
  kvp_seq_id id = {0};
  if (b < 200 && m->num_live > 0) return m->live[b % m->num_live].id;
  if (b < 240 && m->num_stale > 0) return m->stale[b % m->num_stale];
  id.id = b < 250 ? 0u : kvp_fuzz_u32(r);
  return find_live(m, id) != NULL ? (kvp_seq_id){0} : id;
}

static void forget(model *m, shadow_seq *s) {
  if (m->num_stale < 16) m->stale[m->num_stale++] = s->id;
  *s = m->live[--m->num_live];
}

static void add_live(model *m, kvp_seq_id id, size_t length, size_t computed) {
  kvp_fuzz_check(m->num_live < (int)m->max_sequences && find_live(m, id) == NULL && id.id != 0,
                 "a new sequence id %u is 0, in use, or beyond max_sequences", id.id);
  for (int i = 0; i < m->num_stale; ++i) kvp_fuzz_check(m->stale[i].id != id.id, "a freed id came back");
  m->live[m->num_live++] = (shadow_seq){id, length, computed};
}

/* Prompts from a few families so that prefixes repeat and the prefix cache is exercised. */
static size_t make_tokens(kvp_fuzz_reader *r, int32_t *tokens) {
  const size_t n = (size_t)kvp_fuzz_range(r, 0, MAX_TOKENS);
  const int32_t family = (int32_t)kvp_fuzz_range(r, 0, 3);
  const size_t diverge = (size_t)kvp_fuzz_range(r, 0, MAX_TOKENS);
  for (size_t i = 0; i < n; ++i) tokens[i] = family * 1000 + (int32_t)i + (i >= diverge ? 500 : 0);
  return n;
}

static kvp_status expect(kvp_status st, kvp_status want, int pages_may_run_out, const char *op) {
  kvp_fuzz_check(st == want || (pages_may_run_out && want == KVP_OK && st == KVP_ERR_OUT_OF_PAGES),
                 "%s returned %s, the model expects %s", op, kvp_status_name(st), kvp_status_name(want));
  return st;
}

static void op_add(model *m, kvp_fuzz_reader *r) {
  int32_t tokens[MAX_TOKENS];
  const size_t n = make_tokens(r, tokens);
  const uint64_t salt = kvp_fuzz_range(r, 0, 1);
  const uint8_t f = kvp_fuzz_u8(r);
  const uint32_t flags = f < 128 ? 0u : f < 250 ? KVP_POOL_ADD_FLAG_REUSE_ALL : 1u << (f & 31);
  const int bad = (flags & ~KVP_POOL_ADD_FLAG_REUSE_ALL) != 0 || n > MAX_LEN;
  const int full = m->num_live == (int)m->max_sequences;
  snapshot before;
  take_snapshot(m, (kvp_seq_id){0}, &before);
  kvp_seq_id id = {0};
  size_t reused = 7777;
  const kvp_status st = kvp_pool_add_sequence(m->pool, tokens, n, salt, flags, &id, &reused);
  if (bad && full) /* two errors at once: either may be reported */
    kvp_fuzz_check(st == KVP_ERR_INVALID_ARGUMENT || st == KVP_ERR_OUT_OF_PAGES, "add_sequence: %s",
                   kvp_status_name(st));
  else
    expect(st, bad ? KVP_ERR_INVALID_ARGUMENT : full ? KVP_ERR_OUT_OF_PAGES : KVP_OK, 1, "add_sequence");
  if (st != KVP_OK) {
    kvp_fuzz_check(reused == 7777, "add_sequence wrote reused_tokens on failure");
    check_unchanged(m, (kvp_seq_id){0}, &before, "add_sequence");
    return;
  }
  const size_t limit = (flags & KVP_POOL_ADD_FLAG_REUSE_ALL) || n == 0 ? n : (n - 1) / PAGE * PAGE;
  kvp_fuzz_check(reused % PAGE == 0 && reused <= (m->no_prefix_cache ? 0 : limit),
                 "add_sequence reused %zu of %zu tokens", reused, n);
  add_live(m, id, n, reused);
}

static void op_append(model *m, kvp_fuzz_reader *r) {
  int32_t tokens[MAX_TOKENS];
  const kvp_seq_id id = pick_seq(m, r);
  const size_t n = (size_t)kvp_fuzz_range(r, 0, 10);
  for (size_t i = 0; i < n; ++i) tokens[i] = (int32_t)kvp_fuzz_range(r, 0, 3);
  shadow_seq *s = find_live(m, id);
  snapshot before;
  take_snapshot(m, id, &before);
  const kvp_status st = kvp_pool_append(m->pool, id, tokens, n, NULL);
  expect(st, !s ? KVP_ERR_NOT_FOUND : s->length + n > MAX_LEN ? KVP_ERR_INVALID_ARGUMENT : KVP_OK, 1, "append");
  if (st != KVP_OK) {
    check_unchanged(m, id, &before, "append");
    return;
  }
  s->computed = s->length;
  s->length += n;
}

static void op_set_computed(model *m, kvp_fuzz_reader *r) {
  const kvp_seq_id id = pick_seq(m, r);
  shadow_seq *s = find_live(m, id);
  const size_t n = (size_t)kvp_fuzz_range(r, 0, (s ? (int64_t)s->length : 0) + 2);
  snapshot before;
  take_snapshot(m, id, &before);
  const kvp_status st = kvp_pool_set_computed(m->pool, id, n);
  expect(st, !s ? KVP_ERR_NOT_FOUND : n > s->length ? KVP_ERR_INVALID_ARGUMENT : KVP_OK, 0, "set_computed");
  if (st != KVP_OK) {
    check_unchanged(m, id, &before, "set_computed");
    return;
  }
  if (n > s->computed) s->computed = n;
}

static void op_truncate(model *m, kvp_fuzz_reader *r) {
  const kvp_seq_id id = pick_seq(m, r);
  shadow_seq *s = find_live(m, id);
  const size_t n = (size_t)kvp_fuzz_range(r, 0, (s ? (int64_t)s->length : 0) + 1);
  snapshot before;
  take_snapshot(m, id, &before);
  const kvp_status st = kvp_pool_truncate(m->pool, id, n);
  expect(st, !s ? KVP_ERR_NOT_FOUND : n > s->length ? KVP_ERR_INVALID_ARGUMENT : KVP_OK, 0, "truncate");
  if (st != KVP_OK) {
    check_unchanged(m, id, &before, "truncate");
    return;
  }
  s->length = n;
  if (s->computed > n) s->computed = n;
}

static void op_fork(model *m, kvp_fuzz_reader *r) {
  const kvp_seq_id id = pick_seq(m, r);
  const uint32_t k = (uint32_t)kvp_fuzz_range(r, 0, 3);
  const shadow_seq *s = find_live(m, id);
  kvp_seq_id kids[3] = {{0}, {0}, {0}};
  snapshot before;
  take_snapshot(m, id, &before);
  const kvp_status st = kvp_pool_fork(m->pool, id, k, kids);
  const int room = (int)m->max_sequences - m->num_live >= (int)k;
  expect(st, !s ? KVP_ERR_NOT_FOUND : !room ? KVP_ERR_OUT_OF_PAGES : KVP_OK, 0, "fork");
  if (st != KVP_OK) {
    check_unchanged(m, id, &before, "fork");
    return;
  }
  const shadow_seq parent = *s;
  for (uint32_t i = 0; i < k; ++i) add_live(m, kids[i], parent.length, parent.computed);
}

static void op_free(model *m, kvp_fuzz_reader *r) {
  const kvp_seq_id id = pick_seq(m, r);
  shadow_seq *s = find_live(m, id);
  snapshot before;
  take_snapshot(m, id, &before);
  const kvp_status st = kvp_pool_free_sequence(m->pool, id);
  expect(st, s ? KVP_OK : KVP_ERR_NOT_FOUND, 0, "free_sequence");
  if (st != KVP_OK) {
    check_unchanged(m, id, &before, "free_sequence");
    return;
  }
  forget(m, s);
}

static void op_page_table(model *m, kvp_fuzz_reader *r) {
  const kvp_seq_id id = pick_seq(m, r);
  const shadow_seq *s = find_live(m, id);
  const size_t cap = (size_t)kvp_fuzz_range(r, 0, MAX_LEN / PAGE + 1);
  int32_t pages[MAX_LEN / PAGE + 1];
  memset(pages, 0x7F, sizeof pages);
  size_t count = 0;
  const size_t need = s ? (s->length + PAGE - 1) / PAGE : 0;
  const kvp_status st = kvp_pool_get_page_table(m->pool, id, pages, cap, &count);
  expect(st, !s ? KVP_ERR_NOT_FOUND : cap < need ? KVP_ERR_BUFFER_TOO_SMALL : KVP_OK, 0, "get_page_table");
  if (s) kvp_fuzz_check(count == need, "get_page_table: %zu pages for length %zu", count, s->length);
  if (st != KVP_OK) return;
  for (size_t i = 0; i < cap; ++i)
    kvp_fuzz_check(i < need ? pages[i] >= 1 && pages[i] < PAGES : pages[i] == 0, "page table entry %zu = %d", i,
                   pages[i]);
}

static void op_slots(model *m, kvp_fuzz_reader *r) {
  const kvp_seq_id id = pick_seq(m, r);
  const shadow_seq *s = find_live(m, id);
  const size_t len = s ? s->length : 0;
  const size_t start = (size_t)kvp_fuzz_range(r, 0, (int64_t)len + 1);
  const size_t count = (size_t)kvp_fuzz_range(r, 0, (int64_t)len + 1);
  int32_t slots[2 * MAX_LEN + 4], pages[MAX_LEN / PAGE + 1];
  size_t n = 0;
  const kvp_status st = kvp_pool_get_slots(m->pool, id, start, count, slots);
  expect(st, !s ? KVP_ERR_NOT_FOUND : start + count > len ? KVP_ERR_INVALID_ARGUMENT : KVP_OK, 0, "get_slots");
  if (st != KVP_OK) return;
  kvp_fuzz_check(kvp_pool_get_page_table(m->pool, id, pages, MAX_LEN / PAGE + 1, &n) == KVP_OK, "page table");
  for (size_t i = 0; i < count; ++i) {
    const size_t pos = start + i;
    kvp_fuzz_check(slots[i] == pages[pos / PAGE] * PAGE + (int32_t)(pos % PAGE), "slot of position %zu", pos);
  }
}

static void op_clear(model *m) {
  kvp_fuzz_check(kvp_pool_clear_prefix_cache(m->pool) == KVP_OK, "clear_prefix_cache");
  kvp_fuzz_check(stats_of(m->pool).evictable_pages == 0, "evictable pages after clear_prefix_cache");
}

static void check_model(const model *m) {
  const kvp_status st = kvp_pool_check_invariants(m->pool);
  kvp_fuzz_check(st == KVP_OK, "kvp_pool_check_invariants: %s", kvp_status_name(st));
  const kvp_pool_stats s = stats_of(m->pool);
  kvp_fuzz_check(s.num_sequences == m->num_live, "%lld live sequences, the model has %d",
                 (long long)s.num_sequences, m->num_live);
  for (int i = 0; i < m->num_live; ++i) {
    size_t len = 0, comp = 0;
    kvp_fuzz_check(kvp_pool_get_sequence_length(m->pool, m->live[i].id, &len, &comp) == KVP_OK, "length of a live id");
    kvp_fuzz_check(len == m->live[i].length && comp == m->live[i].computed,
                   "sequence %u: length %zu computed %zu, the model has %zu and %zu", m->live[i].id.id, len, comp,
                   m->live[i].length, m->live[i].computed);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kvp_fuzz_reader r = {data, size, 0};
  model m;
  memset(&m, 0, sizeof m);
  kvp_pool_options o;
  kvp_pool_options_init(&o, sizeof o);
  m.max_sequences = o.max_sequences = (uint32_t)kvp_fuzz_range(&r, 1, MAX_SEQS);
  m.no_prefix_cache = kvp_fuzz_u8(&r) < 32;
  o.flags = m.no_prefix_cache ? KVP_POOL_FLAG_NO_PREFIX_CACHE : 0u;
  kvp_fuzz_check(kvp_pool_create(g_cache, &o, &m.pool) == KVP_OK, "kvp_pool_create");
  for (int step = 0; step < 256 && kvp_fuzz_more(&r); ++step) {
    switch (kvp_fuzz_u8(&r) % 10) {
      case 0: case 1: op_add(&m, &r); break;
      case 2: op_append(&m, &r); break;
      case 3: op_set_computed(&m, &r); break;
      case 4: op_truncate(&m, &r); break;
      case 5: op_fork(&m, &r); break;
      case 6: op_free(&m, &r); break;
      case 7: op_clear(&m); break;
      case 8: op_page_table(&m, &r); break;
      default: op_slots(&m, &r); break;
    }
    check_model(&m);
  }
  kvp_fuzz_check(kvp_pool_destroy(m.pool) == KVP_OK, "kvp_pool_destroy");
  return 0;
}
