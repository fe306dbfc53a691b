/* Randomized model-based test of kvpages/pool.h: thousands of random operations (add with prefix
 * reuse, append, set_computed, truncate, fork, free, stale ids, clear, eviction under pressure)
 * run against the pool and against a simple reference model written here. After every
 * operation: the status matches the model's prediction, kvp_pool_check_invariants() passes, every
 * page's reference count and state, every sequence's page table, length and watermark, and the
 * pool's counters equal the model's, and every live sequence's K/V (a tag per token and layer,
 * in K and V, written into the cache when the token was computed) is intact.
 *
 * The model knows nothing of hashes or links: its prefix index maps (salt, whole token prefix)
 * to a page, its free set is a set, and its LRU is an array in release order. It predicts which
 * pages are reused, when an eviction happens and exactly which page it takes.
 *
 * With storage tiers (kvp_pool_add_store: memory and directory stores with small bounds), the
 * model also holds each store as an LRU list of blocks named by the prefix they end, bounded in
 * bytes as the store is: it predicts every write-back of an evicted page (to every tier whose
 * "holds it" bit the pool has clear: a page restored from tier t is not written back to tier t,
 * even when tier t has dropped it since), every block a store drops, and exactly how many pages
 * kvp_pool_add_sequence() restores from which tier (and the tier counters). Random operations
 * behind the pool's back remove blocks, move or copy them between tiers, overwrite them with
 * damaged or short blocks, flip or cut block files on disk, scrub a directory, and make tier 0's
 * next write fail. Memory tiers after tier 0 are the shipped stores, written synchronously by the
 * evicting call. Tier 0 and every directory tier are reached through a recorder: a plug-in (so
 * written by the pool's writer thread) that keeps each block put (the key, so the model learns
 * the key of each prefix) and passes it to the shipped store only when the test has flushed the
 * pool after the operation (kvp_pool_flush_tiers) — a store whose writes become visible later,
 * so that when the writer thread runs does not change what the pool restores.
 *
 * KVP_MODEL_SEED (a number) replaces every run's seed and KVP_MODEL_OPS its number of operations
 * (for longer runs); the seed is printed. */
#include "support.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "kvpages/pool.h"
#include "kvpages/store.h"

#define MAXP 64
#define MAXL 64
#define MAXS 12
#define MAXLAYERS 2
#define MAXT 3  /* tiers */
#define MAXB 48 /* blocks a model store holds at most */
#define NBASE 6 /* the prompts most prompts of a run with tiers start with */
#define DIR_HEADER 48 /* a directory store's file header (kvp_store_create_directory) */
#define MAX_BLOCK_GROUP 8 /* blocks a pool restores from a memory store at once (pool.h) */

typedef struct mseq {
  int alive;
  kvp_seq_id id;
  int32_t tok[MAXL];
  size_t len, computed;
  uint64_t salt;
  int32_t pages[MAXL];
} mseq;

/* A block in a model store: the prefix its page ends (salt, tokens), the key the pool wrote it
 * under (learned from a recorder: unknown until the end of the operation that wrote it to a
 * memory tier), its size, and what the test did to it. */
typedef struct mblock {
  uint64_t salt;
  int plen;
  int32_t tok[MAXL];
  kvp_store_key key;
  int key_known;
  size_t size;       /* block bytes */
  int damaged;       /* overwritten with a block that fails the pool's check */
  int head_bad;      /* ... in its head (size, header, token ids): checked before a page is taken */
  int disk_damaged;  /* its file flipped or cut behind the store's back */
} mblock;

/* A queued tier as the pool sees it: reads go to the shipped store; puts are kept (key, size,
 * bytes, whether it failed) until the test passes them on (settle_tiers); the next `fail_puts`
 * puts fail with KVP_ERR_IO (tier 0). Called on the pool's writer thread. */
typedef struct recorder {
  kvp_store *inner;
  kvp_store_key keys[2 * MAXL];
  size_t sizes[2 * MAXL];
  uint8_t *data[2 * MAXL];
  int failed[2 * MAXL];
  int n, fail_puts;
} recorder;

/* A tier: the shipped store and the model of it (LRU order: b[0] least recent). */
typedef struct mstore {
  kvp_store *store; /* what the pool was given (a queued tier: the recorder's plug-in) */
  kvp_store *inner; /* the shipped store */
  int dir;
  int queued;       /* written by the pool's writer thread, through the recorder */
  recorder rec;
  mblock pend[2 * MAXL]; /* the model's writes to a queued tier in this operation, in order */
  int pend_fail[2 * MAXL];
  int npend;
  char path[64];
  uint64_t max_bytes, bytes;
  int64_t evictions;
  mblock b[MAXB];
  int n;
  kvp_pool_tier_stats st; /* the pool's counters as the model predicts them */
} mstore;

typedef struct model {
  int P, S, maxlen, prefix;
  uint32_t ref[MAXP];
  int indexed[MAXP];
  uint64_t isalt[MAXP];
  int iplen[MAXP];
  int32_t itok[MAXP][MAXL];
  int lru[MAXP], nlru;
  int isfree[MAXP], nfree;
  mseq seq[MAXS];
  int64_t evictions, cow, prompt_tokens, reused_tokens;
  /* pool side */
  kvp_cache *cache;
  kvp_pool *pool;
  int layers;
  float *kv[MAXLAYERS][2]; /* keys and values of each layer */
  int64_t page_stride, row_stride;
  /* storage tiers */
  int ntiers;
  mstore tier[MAXT];
  uint32_t held[MAXP];       /* bit t: the pool believes tier t holds the page's block */
  mblock pblock[MAXP];       /* a page restored from a tier: that tier's block (its key) */
  int fail_puts;             /* the model's copy of tier 0's rec.fail_puts */
  size_t block_size;         /* the block format's size for this cache (docs/store-format.md) */
  int32_t base[NBASE][MAXL];
  int64_t restored, back_ops, held_gone;
  int64_t group_pages, late_rejects; /* memory tiers: pages taken by groups of 2+ blocks, rejects after a take */
  /* recent prompts for prefix hits, and freed ids for stale checks */
  int32_t hist[8][MAXL];
  size_t hist_len[8];
  int nhist;
  kvp_seq_id stale[8];
  int nstale;
  uint64_t rng;
  long ops[10];
} model;

static void m_write_back(model *m, int p);

static int live_count(const model *m) {
  int n = 0;
  for (int i = 0; i < MAXS; ++i) n += m->seq[i].alive;
  return n;
}

static int cdiv(size_t a, int b) { return (int)((a + (size_t)b - 1) / (size_t)b); }

static uint32_t tag_of(const int32_t *tok, size_t pos, uint64_t salt) {
  uint32_t h = 2166136261u ^ (uint32_t)salt;
  for (size_t i = 0; i <= pos; ++i) h = (h ^ (uint32_t)tok[i]) * 16777619u;
  return h % 1000000u + 1u;
}

/* ---- model page bookkeeping ---------------------------------------------------------------- */

static void lru_erase(model *m, int p) {
  for (int i = 0; i < m->nlru; ++i)
    if (m->lru[i] == p) {
      memmove(&m->lru[i], &m->lru[i + 1], sizeof(int) * (size_t)(m->nlru - i - 1));
      --m->nlru;
      return;
    }
  fail_msg("model: page %d not in LRU", p);
}

/* The pool handed out page p for a fresh allocation: it must be free, or (no free page left)
 * the least recently released cached page. */
static void m_take(model *m, int32_t p) {
  assert_in_range(p, 1, m->P - 1);
  if (m->nfree > 0) {
    if (!m->isfree[p]) fail_msg("pool allocated page %d which the model has not free (%d free)", p, m->nfree);
    m->isfree[p] = 0;
    --m->nfree;
  } else {
    if (m->nlru == 0 || m->lru[0] != p)
      fail_msg("pool evicted page %d, model expected LRU head %d", p, m->nlru ? m->lru[0] : -1);
    if (m->ntiers > 0) m_write_back(m, p);
    lru_erase(m, p);
    m->indexed[p] = 0;
    ++m->evictions;
  }
  assert_int_equal(m->ref[p], 0);
  m->ref[p] = 1;
  m->held[p] = 0;
}

static void m_acquire(model *m, int p) {
  if (m->ref[p] == 0) lru_erase(m, p);
  ++m->ref[p];
}

static void m_release(model *m, int p) {
  assert_true(m->ref[p] > 0);
  if (--m->ref[p] > 0) return;
  if (m->indexed[p]) m->lru[m->nlru++] = p;
  else {
    m->isfree[p] = 1;
    ++m->nfree;
  }
}

static int m_find(const model *m, uint64_t salt, const int32_t *tok, int plen) {
  for (int p = 1; p < m->P; ++p)
    if (m->indexed[p] && m->isalt[p] == salt && m->iplen[p] == plen &&
        memcmp(m->itok[p], tok, sizeof(int32_t) * (size_t)plen) == 0)
      return p;
  return -1;
}

/* Page p, the one that ends the first plen tokens of s, enters the index unless an identical
 * page is already there. */
static void m_index(model *m, const mseq *s, int p, int plen) {
  if (m->indexed[p] || m_find(m, s->salt, s->tok, plen) >= 0) return;
  m->indexed[p] = 1;
  m->held[p] = 0; /* computed content: no tier holds it (a restore sets its tier after this) */
  m->isalt[p] = s->salt;
  m->iplen[p] = plen;
  memcpy(m->itok[p], s->tok, sizeof(int32_t) * (size_t)plen);
}

static void m_mark_computed(model *m, mseq *s, size_t n) {
  if (n <= s->computed) return;
  if (!m->prefix) {
    s->computed = n;
    return;
  }
  for (size_t i = s->computed / (size_t)m->S; i < n / (size_t)m->S; ++i) m_index(m, s, s->pages[i], (int)(i + 1) * m->S);
  s->computed = n;
}

/* ---- K/V tags in the cache ----------------------------------------------------------------- */

static float *slot_ptr(model *m, int layer, int v, int32_t slot) {
  return m->kv[layer][v] + (slot / m->S) * m->page_stride + (slot % m->S) * m->row_stride;
}

/* The K (v = 0) or V (v = 1) tag of a token in a layer. */
static float kv_tag(const int32_t *tok, size_t pos, uint64_t salt, int layer, int v) {
  return (float)(tag_of(tok, pos, salt) + (uint32_t)(4 * layer + 2 * v));
}

static void write_tags(model *m, const mseq *s, size_t from, size_t to) {
  int32_t slots[MAXL];
  if (to <= from) return;
  assert_kvp_ok(kvp_pool_get_slots(m->pool, s->id, from, to - from, slots));
  for (size_t i = from; i < to; ++i)
    for (int l = 0; l < m->layers; ++l)
      for (int v = 0; v < 2; ++v) *slot_ptr(m, l, v, slots[i - from]) = kv_tag(s->tok, i, s->salt, l, v);
}

/* ---- storage tiers ------------------------------------------------------------------------- */

static int b_find(const mstore *t, uint64_t salt, const int32_t *tok, int plen) {
  for (int j = 0; j < t->n; ++j)
    if (t->b[j].salt == salt && t->b[j].plen == plen && memcmp(t->b[j].tok, tok, sizeof(int32_t) * (size_t)plen) == 0)
      return j;
  return -1;
}

/* What a block counts against its store's bound (a directory store: the file, header included). */
static uint64_t b_bytes(const mstore *t, size_t size) { return size + (t->dir ? DIR_HEADER : 0); }

static void b_drop(mstore *t, int j) {
  t->bytes -= b_bytes(t, t->b[j].size);
  memmove(&t->b[j], &t->b[j + 1], sizeof(mblock) * (size_t)(t->n - j - 1));
  --t->n;
}

/* A read: the block becomes the most recent; returns its new index. */
static int b_touch(mstore *t, int j) {
  const mblock b = t->b[j];
  memmove(&t->b[j], &t->b[j + 1], sizeof(mblock) * (size_t)(t->n - j - 1));
  t->b[t->n - 1] = b;
  return t->n - 1;
}

/* A put that succeeds: the block (replacing one of the same prefix) is the most recent; the least
 * recent ones are dropped while the store is over its bound. */
static void b_put(mstore *t, const mblock *b) {
  mblock nb = *b;
  const int j = b_find(t, b->salt, b->tok, b->plen);
  if (j >= 0) {
    const mblock *old = &t->b[j];
    if (old->key_known && b->key_known && memcmp(&old->key, &b->key, sizeof b->key) != 0)
      fail_msg("model: one prefix written under two keys");
    if (!b->key_known && old->key_known) { /* the same prefix: the same key */
      nb.key = old->key;
      nb.key_known = 1;
    }
    b_drop(t, j);
  }
  if (t->n == MAXB) fail_msg("model store over %d blocks: lower its bound", MAXB);
  t->b[t->n++] = nb;
  t->bytes += b_bytes(t, b->size);
  while (t->bytes > t->max_bytes) {
    b_drop(t, 0);
    ++t->evictions;
  }
}

/* The pool evicts page p (m_take): it writes the page's block to every tier it does not believe
 * holds it, in tier order: a memory tier after tier 0 at once, a queued tier (the recorder) at the
 * end of the operation (settle_tiers), where tier 0's write fails if the test made it fail. */
static void m_write_back(model *m, int p) {
  mblock b;
  memset(&b, 0, sizeof b);
  b.salt = m->isalt[p];
  b.plen = m->iplen[p];
  memcpy(b.tok, m->itok[p], sizeof(int32_t) * (size_t)b.plen);
  b.size = m->block_size;
  if (m->held[p] != 0) { /* restored from a tier: the key is that block's */
    b.key = m->pblock[p].key;
    b.key_known = m->pblock[p].key_known;
  }
  for (int ti = 0; ti < m->ntiers; ++ti) {
    mstore *t = &m->tier[ti];
    if (m->held[p] & (1u << ti)) {
      m->held_gone += b_find(t, b.salt, b.tok, b.plen) < 0; /* dropped since: still not rewritten */
      continue;
    }
    if (!t->queued) {
      b_put(t, &b);
      ++t->st.blocks_written;
      t->st.bytes_written += (int64_t)b.size;
      continue;
    }
    if (t->npend == 2 * MAXL) fail_msg("model: more than %d writes to tier %d in one operation", 2 * MAXL, ti);
    t->pend_fail[t->npend] = ti == 0 && m->fail_puts > 0;
    if (t->pend_fail[t->npend]) --m->fail_puts;
    t->pend[t->npend++] = b;
  }
}

/* Sets the key of every block of a memory tier that ends the prefix of b and has none yet. */
static void learn_key(model *m, const mblock *b) {
  for (int ti = 0; ti < m->ntiers; ++ti) {
    const int j = b_find(&m->tier[ti], b->salt, b->tok, b->plen);
    if (j < 0) continue;
    mblock *x = &m->tier[ti].b[j];
    if (x->key_known && memcmp(&x->key, &b->key, sizeof b->key) != 0)
      fail_msg("model: one prefix under two keys (tier %d, block %d)", ti, j);
    x->key = b->key;
    x->key_known = 1;
  }
}

/* After an operation: flushes the pool's writes and matches each queued tier's recorded puts with
 * the model's, in order; a put that succeeded reaches the shipped store (and the model's) now. */
static void settle_tiers(model *m, long op) {
  assert_kvp_ok(kvp_pool_flush_tiers(m->pool, 0));
  for (int ti = 0; ti < m->ntiers; ++ti) {
    mstore *t = &m->tier[ti];
    recorder *r = &t->rec;
    if (r->n != t->npend) fail_msg("op %ld: tier %d got %d writes, the model %d", op, ti, r->n, t->npend);
    for (int k = 0; k < r->n; ++k) {
      mblock b = t->pend[k];
      if (b.key_known && memcmp(&b.key, &r->keys[k], sizeof b.key) != 0)
        fail_msg("op %ld: tier %d: write %d under another key than the block restored", op, ti, k);
      if (r->sizes[k] != m->block_size)
        fail_msg("op %ld: tier %d: a block of %zu bytes, the format says %zu", op, ti, r->sizes[k], m->block_size);
      if (r->failed[k] != t->pend_fail[k]) fail_msg("op %ld: tier %d: write %d failed unexpectedly", op, ti, k);
      b.key = r->keys[k];
      b.key_known = 1;
      if (r->failed[k]) {
        ++t->st.errors;
      } else {
        assert_kvp_ok(kvp_store_put(t->inner, &b.key, r->data[k], r->sizes[k]));
        b_put(t, &b);
        ++t->st.blocks_written;
        t->st.bytes_written += (int64_t)b.size;
      }
      learn_key(m, &b);
      free(r->data[k]);
      r->data[k] = NULL;
    }
    r->n = t->npend = 0;
  }
  for (int ti = 0; ti < m->ntiers; ++ti)
    for (int j = 0; j < m->tier[ti].n; ++j)
      if (!m->tier[ti].b[j].key_known) fail_msg("op %ld: tier %d: block %d was written under no key learned", op, ti, j);
}

/* Restores pages [i, i + n) of s from a memory tier (the pool reads its blocks in place, a group
 * of up to MAX_BLOCK_GROUP at a time): a first look makes each block the most recent and checks its
 * head, ending the run at a missing block or a bad head before any page is taken; then a page is
 * taken per block (free pages first, then the LRU heads, all written back before the first is
 * evicted); the second look finds the blocks still there, and the first damaged one ends the run:
 * its page and the ones after it are released (the evicted ones to the free set). Returns how many
 * were restored. */
static int m_restore_group(model *m, const mseq *s, mstore *t, int ti, int i, int n, const int32_t *row) {
  int heads = 0;
  for (; heads < n; ++heads) {
    int j = b_find(t, s->salt, s->tok, (i + heads + 1) * m->S);
    if (j < 0) break;
    t->st.bytes_read += (int64_t)t->b[j].size;
    j = b_touch(t, j);
    if (t->b[j].head_bad) {
      ++t->st.rejected;
      break;
    }
  }
  const int from_free = heads < m->nfree ? heads : m->nfree;
  int evicted[MAX_BLOCK_GROUP];
  for (int k = from_free; k < heads; ++k) evicted[k] = m->lru[k - from_free];
  for (int k = from_free; k < heads; ++k) m_write_back(m, evicted[k]);
  for (int k = from_free; k < heads; ++k) {
    lru_erase(m, evicted[k]);
    m->indexed[evicted[k]] = 0;
    ++m->evictions;
  }
  int seen = 0, good = 0;
  while (seen < heads && b_find(t, s->salt, s->tok, (i + seen + 1) * m->S) >= 0) ++seen;
  while (good < seen && !t->b[b_find(t, s->salt, s->tok, (i + good + 1) * m->S)].damaged) ++good;
  if (good < seen) {
    ++t->st.rejected;
    ++m->late_rejects;
  }
  if (heads > 1) m->group_pages += heads;
  for (int k = 0; k < heads; ++k) {
    const int32_t p = k < good ? row[i + k] : k < from_free ? -1 : evicted[k];
    if (k < from_free && k < good) { /* one of the free pages */
      if (!m->isfree[p]) fail_msg("pool restored into page %d which the model has not free", p);
      m->isfree[p] = 0;
      --m->nfree;
    } else if (k >= from_free && p != evicted[k]) {
      fail_msg("pool restored into page %d, the model expected evicted page %d", p, evicted[k]);
    }
    if (k >= good) { /* released: an evicted page is free now, a free one stays free */
      if (k >= from_free) {
        m->isfree[p] = 1;
        ++m->nfree;
      }
      continue;
    }
    assert_int_equal(m->ref[p], 0);
    m->ref[p] = 1;
    const int plen = (i + k + 1) * m->S;
    m_index(m, s, p, plen);
    m->held[p] = 1u << ti;
    m->pblock[p] = t->b[b_find(t, s->salt, s->tok, plen)];
  }
  return good;
}

/* kvp_pool_add_sequence after its in-memory match (pool.h, "Storage tiers"): the prompt's pages
 * [from, max_hits) are asked of each tier in turn (one exists), then read while they were found,
 * are still there and check out; each restored page takes a fresh page, row[i], and is indexed.
 * Returns the end of the restored run. */
static int m_restore(model *m, const mseq *s, int from, int max_hits, const int32_t *row) {
  int next = from;
  for (int ti = 0; ti < m->ntiers && next < max_hits; ++ti) {
    mstore *t = &m->tier[ti];
    const int asked = max_hits - next;
    int found[MAXL], got = 0;
    for (int j = 0; j < asked; ++j) found[j] = b_find(t, s->salt, s->tok, (next + j + 1) * m->S) >= 0;
    while (got < asked && found[got]) {
      if (!t->queued) { /* a shipped memory store: read in place, by groups */
        int n = 1;
        while (n < MAX_BLOCK_GROUP && got + n < asked && found[got + n]) ++n;
        const int k = m_restore_group(m, s, t, ti, next + got, n, row);
        got += k;
        if (k < n) break;
        continue;
      }
      const int i = next + got, plen = (i + 1) * m->S;
      int j = b_find(t, s->salt, s->tok, plen);
      if (j < 0) break; /* dropped since the exists, by the write-back of an eviction */
      if (t->b[j].disk_damaged) { /* the store finds it damaged and deletes it */
        b_drop(t, j);
        ++t->st.rejected;
        break;
      }
      t->st.bytes_read += (int64_t)t->b[j].size;
      j = b_touch(t, j);
      if (t->b[j].damaged) {
        ++t->st.rejected;
        break;
      }
      const mblock restored = t->b[j]; /* before m_take's write-back moves the tier's blocks */
      m_take(m, row[i]);
      m_index(m, s, row[i], plen);
      m->held[row[i]] = 1u << ti; /* the pool writes it back to the other tiers only */
      m->pblock[row[i]] = restored;
      ++got;
    }
    t->st.lookups += asked;
    t->st.hits += got;
    t->st.misses += asked - got;
    t->st.restored_tokens += (int64_t)got * m->S;
    next += got;
  }
  m->restored += next - from;
  return next;
}

static kvp_status KVP_CALL rec_put(void *u, const kvp_store_key *k, const void *d, size_t n) {
  recorder *r = (recorder *)u;
  if (r->n == 2 * MAXL) return KVP_ERR_INTERNAL; /* settle_tiers reports the count */
  r->keys[r->n] = *k;
  r->sizes[r->n] = n;
  r->failed[r->n] = r->fail_puts > 0;
  if (r->failed[r->n]) {
    --r->fail_puts;
    ++r->n;
    return KVP_ERR_IO;
  }
  r->data[r->n] = (uint8_t *)malloc(n);
  if (r->data[r->n] == NULL) return KVP_ERR_OUT_OF_MEMORY;
  memcpy(r->data[r->n++], d, n);
  return KVP_OK;
}
static kvp_status KVP_CALL rec_get(void *u, const kvp_store_key *k, void *dst, size_t cap, size_t *size) {
  return kvp_store_get(((recorder *)u)->inner, k, dst, cap, size);
}
static kvp_status KVP_CALL rec_exists(void *u, const kvp_store_key *k, size_t n, uint8_t *found) {
  return kvp_store_exists(((recorder *)u)->inner, k, n, found);
}
static kvp_status KVP_CALL rec_remove(void *u, const kvp_store_key *k) {
  return kvp_store_remove(((recorder *)u)->inner, k);
}

static void block_file(const mstore *t, const kvp_store_key *k, char *out, size_t cap) {
  int at = snprintf(out, cap, "%s/", t->path);
  for (int i = 0; i < 16; ++i) at += snprintf(out + at, cap - (size_t)at, "%02x", k->bytes[i]);
  snprintf(out + at, cap - (size_t)at, ".kvpb");
}

/* Reads block j of a tier as a user would (a use for the LRU). False when the store found its
 * file damaged and deleted it. */
static int read_block(model *m, mstore *t, int *j, uint8_t *buf, size_t cap, size_t *size) {
  const kvp_status st = kvp_store_get(t->inner, &t->b[*j].key, buf, cap, size);
  if (t->b[*j].disk_damaged) {
    if (st != KVP_ERR_FORMAT_CHECKSUM && st != KVP_ERR_FORMAT_TRUNCATED)
      fail_msg("a damaged block file read back as %s", kvp_status_name(st));
    b_drop(t, *j);
    return 0;
  }
  assert_kvp_ok(st);
  assert_int_equal(*size, t->b[*j].size);
  *j = b_touch(t, *j);
  return 1;
}

/* Damage behind the store's back: flip a byte of a block file or cut it short. */
static void damage_file(model *m, mstore *t, mblock *b) {
  char path[128];
  if (b->disk_damaged) return;
  block_file(t, &b->key, path, sizeof path);
  const int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  const off_t at = (off_t)kvp_test_rand_range(&m->rng, DIR_HEADER, DIR_HEADER + (int64_t)b->size - 1);
  if (kvp_test_rand_range(&m->rng, 0, 1) == 0) {
    assert_int_equal(ftruncate(fd, at), 0);
  } else {
    uint8_t c = 0;
    assert_int_equal(pread(fd, &c, 1, at), 1);
    c ^= 0x5A;
    assert_int_equal(pwrite(fd, &c, 1, at), 1);
  }
  close(fd);
  b->disk_damaged = 1;
}

/* An operation on the tiers behind the pool's back. */
static void op_behind(model *m) {
  static uint8_t buf[1 << 16];
  const int ti = (int)kvp_test_rand_range(&m->rng, 0, m->ntiers - 1);
  mstore *t = &m->tier[ti];
  int64_t kind = kvp_test_rand_range(&m->rng, 0, 11);
  if (kind > 7) kind = 4 + (kind & 1); /* mostly copies and moves: the lower tiers' content */
  ++m->back_ops;
  if (kind == 7) { /* tier 0's next write fails */
    if (m->fail_puts < 2) {
      ++m->fail_puts;
      ++m->tier[0].rec.fail_puts;
    }
    return;
  }
  if (kind == 6) {
    if (!t->dir) return;
    kvp_store_scrub_report r = KVP_STORE_SCRUB_REPORT_INIT;
    assert_kvp_ok(kvp_store_scrub(t->inner, &r));
    int64_t damaged = 0, freed = 0;
    assert_int_equal(r.blocks_checked, t->n);
    for (int j = t->n - 1; j >= 0; --j)
      if (t->b[j].disk_damaged) {
        ++damaged;
        freed += (int64_t)b_bytes(t, t->b[j].size);
        b_drop(t, j);
      }
    assert_int_equal(r.blocks_damaged, damaged);
    assert_int_equal(r.bytes_freed, freed);
    return;
  }
  if (t->n == 0) return;
  int j = (int)kvp_test_rand_range(&m->rng, 0, t->n - 1);
  size_t size = 0;
  if (kind == 0) { /* remove */
    assert_kvp_ok(kvp_store_remove(t->inner, &t->b[j].key));
    b_drop(t, j);
  } else if (kind == 1 && t->dir) { /* damage on disk */
    damage_file(m, t, &t->b[j]);
  } else if (kind <= 3) { /* overwrite with a damaged or short block */
    if (!read_block(m, t, &j, buf, sizeof buf, &size)) return;
    mblock b = t->b[j];
    if (kind == 2 && size > 1) {
      b.size = (size_t)kvp_test_rand_range(&m->rng, 1, (int64_t)size - 1);
      b.head_bad = 1;
    } else {
      const size_t at = (size_t)kvp_test_rand_range(&m->rng, 0, (int64_t)size - 1);
      buf[at] ^= (uint8_t)kvp_test_rand_range(&m->rng, 1, 255);
      b.head_bad = at < 72 + 4 * (size_t)m->S; /* the header or the token ids, else the checksum's bytes */
    }
    b.damaged = 1;
    assert_kvp_ok(kvp_store_put(t->inner, &b.key, buf, b.size));
    b_put(t, &b);
  } else if (m->ntiers > 1) { /* copy (4) or move (5) to another tier */
    const int ui = (int)(ti + kvp_test_rand_range(&m->rng, 1, m->ntiers - 1)) % m->ntiers;
    if (!read_block(m, t, &j, buf, sizeof buf, &size)) return;
    mblock b = t->b[j];
    if (kind == 5) {
      assert_kvp_ok(kvp_store_remove(t->inner, &b.key));
      b_drop(t, j);
    }
    assert_kvp_ok(kvp_store_put(m->tier[ui].inner, &b.key, buf, size));
    b_put(&m->tier[ui], &b);
  }
}

static void compare_tiers(model *m, long op) {
  assert_int_equal(m->fail_puts, m->tier[0].rec.fail_puts);
  for (int ti = 0; ti < m->ntiers; ++ti) {
    const mstore *t = &m->tier[ti];
    kvp_pool_tier_stats ps = KVP_POOL_TIER_STATS_INIT;
    assert_kvp_ok(kvp_pool_get_tier_stats(m->pool, (uint32_t)ti, &ps));
    const int64_t got[] = {ps.lookups, ps.hits, ps.misses, ps.rejected, ps.errors,
                           ps.restored_tokens, ps.bytes_read, ps.blocks_written, ps.bytes_written};
    const int64_t want[] = {t->st.lookups, t->st.hits, t->st.misses, t->st.rejected, t->st.errors,
                            t->st.restored_tokens, t->st.bytes_read, t->st.blocks_written, t->st.bytes_written};
    static const char *const names[] = {"lookups", "hits", "misses", "rejected", "errors",
                                        "restored_tokens", "bytes_read", "blocks_written", "bytes_written"};
    int wrong = 0;
    for (size_t k = 0; k < sizeof got / sizeof got[0]; ++k)
      if (got[k] != want[k] && ++wrong)
        print_message("op %ld: tier %d %s: pool %lld, model %lld\n", op, ti, names[k], (long long)got[k], (long long)want[k]);
    if (wrong) fail_msg("op %ld: tier %d: %d counter(s) differ from the model", op, ti, wrong);
    assert_int_equal(ps.num_tiers, m->ntiers);
    kvp_store_stats ss = KVP_STORE_STATS_INIT;
    assert_kvp_ok(kvp_store_get_stats(t->inner, &ss));
    if (ss.blocks != t->n || ss.bytes != (int64_t)t->bytes || ss.evictions != t->evictions)
      fail_msg("op %ld: tier %d holds %lld blocks, %lld bytes, dropped %lld; the model %d, %llu, %lld", op, ti,
               (long long)ss.blocks, (long long)ss.bytes, (long long)ss.evictions, t->n, (unsigned long long)t->bytes,
               (long long)t->evictions);
    kvp_store_key keys[MAXB];
    uint8_t found[MAXB];
    for (int j = 0; j < t->n; ++j) keys[j] = t->b[j].key;
    assert_kvp_ok(kvp_store_exists(t->inner, keys, (size_t)t->n, found));
    for (int j = 0; j < t->n; ++j)
      if (!found[j]) fail_msg("op %ld: tier %d lost block %d of the model", op, ti, j);
  }
}

/* Tiers from a spec such as "m6d12": a memory (m) or directory (d) store bounded to about that
 * many blocks, in order; tier 0 and the directory tiers are reached through a recorder. */
static void open_tiers(model *m, const char *spec) {
  kvp_store_options o = KVP_STORE_OPTIONS_INIT;
  o.flags = KVP_STORE_FLAG_NO_SYNC;
  /* the block format: a 72-byte header and the token ids padded to 64 bytes, every layer's page,
   * an 8-byte checksum */
  m->block_size = (72 + 4 * (size_t)m->S + 63) / 64 * 64 + kvp_test_layer_bytes(m->cache) / (size_t)m->P * (size_t)m->layers + 8;
  const uint64_t block = m->block_size;
  while (*spec != '\0') {
    mstore *t = &m->tier[m->ntiers++];
    assert_true(m->ntiers <= MAXT);
    t->dir = *spec++ == 'd';
    t->max_bytes = strtoull(spec, (char **)&spec, 10) * (block + (t->dir ? DIR_HEADER : 0));
    if (t->dir) {
      snprintf(t->path, sizeof t->path, "/tmp/kvp_model_XXXXXX");
      assert_non_null(mkdtemp(t->path));
      assert_kvp_ok(kvp_store_create_directory(t->path, t->max_bytes, &o, &t->inner));
    } else {
      assert_kvp_ok(kvp_store_create_memory(t->max_bytes, NULL, &t->inner));
    }
    t->store = t->inner;
    t->st.struct_size = sizeof t->st;
    t->queued = m->ntiers == 1 || t->dir;
    if (!t->queued) continue;
    t->rec.inner = t->inner;
    const kvp_store_vtable vt = {sizeof vt, KVP_STORE_VTABLE_VERSION, &t->rec, rec_put, rec_get, rec_exists, rec_remove,
                                 NULL, NULL};
    assert_kvp_ok(kvp_store_create(&vt, &t->store));
  }
  for (int ti = 0; ti < m->ntiers; ++ti) assert_kvp_ok(kvp_pool_add_store(m->pool, m->tier[ti].store));
}

static void close_tiers(model *m) {
  for (int ti = 0; ti < m->ntiers; ++ti) {
    mstore *t = &m->tier[ti];
    if (t->store != t->inner) assert_kvp_ok(kvp_store_destroy(t->store));
    assert_kvp_ok(kvp_store_destroy(t->inner));
    if (!t->dir) continue;
    char path[128];
    for (int j = 0; j < t->n; ++j) {
      block_file(t, &t->b[j].key, path, sizeof path);
      unlink(path);
    }
    if (rmdir(t->path) != 0) fail_msg("%s holds files the model does not know", t->path);
  }
}

/* ---- full comparison ----------------------------------------------------------------------- */

static void compare(model *m, long op) {
  if (m->ntiers > 0) settle_tiers(m, op);
  kvp_status st = kvp_pool_check_invariants(m->pool);
  if (st != KVP_OK) fail_msg("op %ld: invariants: %s", op, kvp_last_error_message());
  int64_t used = 0, indexed = 0;
  for (int p = 0; p < m->P; ++p) {
    uint32_t ref = 0, fl = 0;
    assert_kvp_ok(kvp_pool_get_page_state(m->pool, p, &ref, &fl));
    uint32_t want = p == 0 ? KVP_PAGE_FLAG_NULL : 0;
    if (p > 0 && m->isfree[p]) want |= KVP_PAGE_FLAG_FREE;
    if (p > 0 && m->indexed[p]) want |= KVP_PAGE_FLAG_INDEXED;
    if (ref != m->ref[p] || fl != want)
      fail_msg("op %ld: page %d: pool ref %u flags %u, model ref %u flags %u", op, p, ref, fl, m->ref[p], want);
    used += m->ref[p] > 0;
    indexed += m->indexed[p];
  }
  kvp_pool_stats ps;
  ps.struct_size = sizeof ps;
  assert_kvp_ok(kvp_pool_get_stats(m->pool, &ps));
  assert_int_equal(ps.free_pages, m->nfree);
  assert_int_equal(ps.evictable_pages, m->nlru);
  assert_int_equal(ps.used_pages, used);
  assert_int_equal(ps.indexed_pages, indexed);
  assert_int_equal(ps.num_sequences, live_count(m));
  assert_int_equal(ps.evictions, m->evictions);
  assert_int_equal(ps.cow_copies, m->cow);
  assert_int_equal(ps.prompt_tokens, m->prompt_tokens);
  assert_int_equal(ps.reused_tokens, m->reused_tokens);
  if (m->ntiers > 0) compare_tiers(m, op);
  for (int i = 0; i < MAXS; ++i) {
    const mseq *s = &m->seq[i];
    if (!s->alive) continue;
    size_t len = 0, comp = 0, n = 0;
    int32_t row[MAXL], slots[MAXL];
    assert_kvp_ok(kvp_pool_get_sequence_length(m->pool, s->id, &len, &comp));
    assert_int_equal(len, s->len);
    assert_int_equal(comp, s->computed);
    assert_kvp_ok(kvp_pool_get_page_table(m->pool, s->id, row, MAXL, &n));
    assert_int_equal(n, cdiv(s->len, m->S));
    if (n > 0 && memcmp(row, s->pages, n * sizeof(int32_t)) != 0) fail_msg("op %ld: page table of seq %d differs", op, i);
    assert_kvp_ok(kvp_pool_get_slots(m->pool, s->id, 0, s->len, slots));
    for (size_t pos = 0; pos < s->len; ++pos)
      for (int l = 0; l < m->layers; ++l)
        for (int v = 0; v < 2; ++v) {
          const float got = *slot_ptr(m, l, v, slots[pos]), want = kv_tag(s->tok, pos, s->salt, l, v);
          if (got != want)
            fail_msg("op %ld: seq %d position %zu (slot %d) layer %d %c holds tag %.0f, want %.0f", op, i, pos,
                     slots[pos], l, v ? 'V' : 'K', (double)got, (double)want);
        }
  }
}

/* ---- operations ---------------------------------------------------------------------------- */

static int pick_live(model *m) {
  int n = live_count(m);
  if (n == 0) return -1;
  int k = (int)kvp_test_rand_range(&m->rng, 0, n - 1);
  for (int i = 0; i < MAXS; ++i)
    if (m->seq[i].alive && k-- == 0) return i;
  return -1;
}

static int free_model_slot(const model *m) {
  for (int i = 0; i < MAXS; ++i)
    if (!m->seq[i].alive) return i;
  return -1;
}

static void random_tokens(model *m, int32_t *t, size_t n) {
  for (size_t i = 0; i < n; ++i) t[i] = (int32_t)kvp_test_rand_range(&m->rng, 0, 2);
}

static void op_add(model *m) {
  int32_t tok[MAXL + 4];
  size_t n = (size_t)kvp_test_rand_range(&m->rng, 0, m->maxlen / 2);
  if (kvp_test_rand_range(&m->rng, 0, 40) == 0) n = (size_t)m->maxlen + 1; /* too long */
  random_tokens(m, tok, n > MAXL ? MAXL + 1 : n);
  if (m->nhist > 0 && kvp_test_rand_range(&m->rng, 0, 2) > 0) {
    /* a prompt sharing a prefix with an earlier one */
    const int h = (int)kvp_test_rand_range(&m->rng, 0, m->nhist - 1);
    size_t keep = (size_t)kvp_test_rand_range(&m->rng, 0, (int64_t)m->hist_len[h]);
    if (keep > n) keep = n;
    memcpy(tok, m->hist[h], sizeof(int32_t) * keep);
  }
  if (m->ntiers > 0 && kvp_test_rand_range(&m->rng, 0, 3) > 0) {
    /* with tiers, mostly one of a few long prompts, so that evicted prefixes are asked again */
    const int64_t b = kvp_test_rand_range(&m->rng, 0, NBASE - 1);
    const size_t keep = (size_t)kvp_test_rand_range(&m->rng, (int64_t)n / 2, (int64_t)n);
    memcpy(tok, m->base[b], sizeof(int32_t) * keep);
  }
  const uint64_t salt = (uint64_t)kvp_test_rand_range(&m->rng, 0, 3) == 0 ? 1 : 0;
  const uint32_t flags = kvp_test_rand_range(&m->rng, 0, 3) == 0 ? KVP_POOL_ADD_FLAG_REUSE_ALL : 0;
  const int slot = free_model_slot(m);

  kvp_status want = KVP_OK;
  int hits = 0, hit_pages[MAXL], hit_evictable = 0, max_hits = 0;
  if (n > (size_t)m->maxlen) want = KVP_ERR_INVALID_ARGUMENT;
  else if (slot < 0) want = KVP_ERR_OUT_OF_PAGES;
  else {
    if (n > 0 && m->prefix) {
      max_hits = (int)((flags & KVP_POOL_ADD_FLAG_REUSE_ALL) ? n / (size_t)m->S : (n - 1) / (size_t)m->S);
      while (hits < max_hits) {
        const int p = m_find(m, salt, tok, (hits + 1) * m->S);
        if (p < 0) break;
        hit_pages[hits++] = p;
        hit_evictable += m->ref[p] == 0;
      }
    }
    if (cdiv(n, m->S) - hits > m->nfree + m->nlru - hit_evictable) want = KVP_ERR_OUT_OF_PAGES;
  }
  kvp_seq_id id = {0};
  size_t reused = 12345;
  kvp_status st = kvp_pool_add_sequence(m->pool, tok, n, salt, flags, &id, &reused);
  if (st != want) fail_msg("add(n=%zu): got %s, model says %s: %s", n, kvp_status_name(st), kvp_status_name(want),
                           kvp_last_error_message());
  if (st != KVP_OK) {
    assert_int_equal(reused, 12345);
    return;
  }
  mseq *s = &m->seq[slot];
  memset(s, 0, sizeof *s);
  s->alive = 1;
  s->id = id;
  s->len = n;
  s->computed = reused;
  s->salt = salt;
  memcpy(s->tok, tok, sizeof(int32_t) * n);
  size_t np = 0;
  assert_kvp_ok(kvp_pool_get_page_table(m->pool, id, s->pages, MAXL, &np));
  assert_int_equal(np, cdiv(n, m->S));
  for (int i = 0; i < hits; ++i) {
    assert_int_equal(s->pages[i], hit_pages[i]);
    m_acquire(m, hit_pages[i]);
  }
  const int restored_end = m->ntiers > 0 && hits < max_hits ? m_restore(m, s, hits, max_hits, s->pages) : hits;
  if (reused != (size_t)restored_end * (size_t)m->S) {
    compare_tiers(m, -1);
    fail_msg("add(n=%zu): %zu tokens reused, the model says %d from memory and %d from the tiers", n, reused, hits * m->S,
             (restored_end - hits) * m->S);
  }
  for (size_t i = (size_t)restored_end; i < np; ++i) m_take(m, s->pages[i]);
  m->prompt_tokens += (int64_t)n;
  m->reused_tokens += (int64_t)reused;
  write_tags(m, s, reused, n); /* the runtime computes the tokens that were not reused */
  if (n > 0) {
    const int h = m->nhist < 8 ? m->nhist++ : (int)kvp_test_rand_range(&m->rng, 0, 7);
    memcpy(m->hist[h], tok, sizeof(int32_t) * n);
    m->hist_len[h] = n;
  }
}

static void op_append(model *m) {
  const int i = pick_live(m);
  if (i < 0) return;
  mseq *s = &m->seq[i];
  size_t k = (size_t)kvp_test_rand_range(&m->rng, 0, 6);
  if (kvp_test_rand_range(&m->rng, 0, 30) == 0) k = (size_t)m->maxlen; /* overflow */
  int32_t tok[MAXL];
  random_tokens(m, tok, k > MAXL ? MAXL : k);
  const size_t L = s->len;
  kvp_status want = KVP_OK;
  int cow = 0;
  if (L + k > (size_t)m->maxlen) want = KVP_ERR_INVALID_ARGUMENT;
  else {
    const int partial = (L % (size_t)m->S) != 0 && k > 0;
    cow = partial && m->ref[s->pages[L / (size_t)m->S]] > 1;
    if (cdiv(L + k, m->S) - cdiv(L, m->S) + cow > m->nfree + m->nlru) want = KVP_ERR_OUT_OF_PAGES;
  }
  kvp_status st = kvp_pool_append(m->pool, s->id, tok, k, NULL);
  if (st != want) fail_msg("append(len %zu + %zu): got %s, model says %s: %s", L, k, kvp_status_name(st),
                           kvp_status_name(want), kvp_last_error_message());
  if (st != KVP_OK) return;
  int32_t row[MAXL];
  size_t np = 0;
  assert_kvp_ok(kvp_pool_get_page_table(m->pool, s->id, row, MAXL, &np));
  assert_int_equal(np, cdiv(L + k, m->S));
  const size_t ti = L / (size_t)m->S;
  if (cow) {
    assert_int_not_equal(row[ti], s->pages[ti]);
    m_take(m, row[ti]);
    m_release(m, s->pages[ti]);
    s->pages[ti] = row[ti];
    ++m->cow;
  }
  m_mark_computed(m, s, L);
  if ((L % (size_t)m->S) != 0 && k > 0 && !cow) m->indexed[s->pages[ti]] = 0; /* written in place */
  for (size_t j = 0; j < (size_t)cdiv(L, m->S); ++j) assert_int_equal(row[j], s->pages[j]);
  for (size_t j = (size_t)cdiv(L, m->S); j < np; ++j) {
    m_take(m, row[j]);
    s->pages[j] = row[j];
  }
  memcpy(s->tok + L, tok, sizeof(int32_t) * k);
  s->len = L + k;
  write_tags(m, s, L, L + k);
}

static void op_set_computed(model *m) {
  const int i = pick_live(m);
  if (i < 0) return;
  mseq *s = &m->seq[i];
  const size_t n = (size_t)kvp_test_rand_range(&m->rng, 0, (int64_t)s->len + 1);
  const kvp_status want = n > s->len ? KVP_ERR_INVALID_ARGUMENT : KVP_OK;
  kvp_status st = kvp_pool_set_computed(m->pool, s->id, n);
  assert_int_equal(st, want);
  if (st == KVP_OK) m_mark_computed(m, s, n);
}

static void op_truncate(model *m) {
  const int i = pick_live(m);
  if (i < 0) return;
  mseq *s = &m->seq[i];
  const size_t n = (size_t)kvp_test_rand_range(&m->rng, 0, (int64_t)s->len + 1);
  const kvp_status want = n > s->len ? KVP_ERR_INVALID_ARGUMENT : KVP_OK;
  kvp_status st = kvp_pool_truncate(m->pool, s->id, n);
  assert_int_equal(st, want);
  if (st != KVP_OK) return;
  for (int j = cdiv(s->len, m->S); j > cdiv(n, m->S); --j) m_release(m, s->pages[j - 1]);
  s->len = n;
  if (s->computed > n) s->computed = n;
}

static void op_fork(model *m) {
  const int i = pick_live(m);
  if (i < 0) return;
  const uint32_t k = (uint32_t)kvp_test_rand_range(&m->rng, 0, 3);
  const int free_slots = MAXS - live_count(m);
  const kvp_status want = (int)k > free_slots ? KVP_ERR_OUT_OF_PAGES : KVP_OK;
  kvp_seq_id kids[4];
  kvp_status st = kvp_pool_fork(m->pool, m->seq[i].id, k, kids);
  assert_int_equal(st, want);
  if (st != KVP_OK) return;
  for (uint32_t c = 0; c < k; ++c) {
    const int slot = free_model_slot(m);
    m->seq[slot] = m->seq[i];
    m->seq[slot].id = kids[c];
    for (int j = 0; j < cdiv(m->seq[i].len, m->S); ++j) m_acquire(m, m->seq[i].pages[j]);
  }
}

static void op_free(model *m) {
  const int i = pick_live(m);
  if (i < 0) return;
  mseq *s = &m->seq[i];
  assert_kvp_ok(kvp_pool_free_sequence(m->pool, s->id));
  for (int j = cdiv(s->len, m->S); j > 0; --j) m_release(m, s->pages[j - 1]);
  s->alive = 0;
  m->stale[m->nstale < 8 ? m->nstale++ : (int)kvp_test_rand_range(&m->rng, 0, 7)] = s->id;
}

static void op_stale(model *m) {
  if (m->nstale == 0) return;
  const kvp_seq_id id = m->stale[kvp_test_rand_range(&m->rng, 0, m->nstale - 1)];
  for (int i = 0; i < MAXS; ++i)
    if (m->seq[i].alive && m->seq[i].id.id == id.id) fail_msg("a freed id 0x%08x was handed out again", id.id);
  int32_t t = 1;
  assert_int_equal(kvp_pool_append(m->pool, id, &t, 1, NULL), KVP_ERR_NOT_FOUND);
  assert_int_equal(kvp_pool_free_sequence(m->pool, id), KVP_ERR_NOT_FOUND);
}

static void op_clear(model *m) {
  assert_kvp_ok(kvp_pool_clear_prefix_cache(m->pool));
  for (int p = 1; p < m->P; ++p) m->indexed[p] = 0;
  for (int i = 0; i < m->nlru; ++i) {
    m->isfree[m->lru[i]] = 1;
    ++m->nfree;
  }
  m->nlru = 0;
}

/* One run: the cache's shape, the pool's size, the tiers ("" = none, see open_tiers), the seed
 * and the number of operations (both replaced by KVP_MODEL_SEED / KVP_MODEL_OPS when set). */
typedef struct run_spec {
  int S, P, maxlen, layers, head_dim, prefix;
  const char *tiers;
  uint64_t seed;
  long ops;
} run_spec;

static uint64_t env_or(const char *name, uint64_t value) {
  const char *v = getenv(name);
  return v != NULL && *v != '\0' ? strtoull(v, NULL, 0) : value;
}

static void run_model(run_spec r) {
  const int S = r.S, P = r.P;
  const uint64_t seed = env_or("KVP_MODEL_SEED", r.seed);
  const long num_ops = (long)env_or("KVP_MODEL_OPS", (uint64_t)r.ops);
  printf("# seed 0x%016llx (KVP_MODEL_SEED), %ld ops (KVP_MODEL_OPS), tiers '%s'\n", (unsigned long long)seed, num_ops,
         r.tiers);
  model *m = (model *)test_calloc(1, sizeof *m);
  m->prefix = r.prefix;
  m->S = S;
  m->P = P;
  m->maxlen = r.maxlen;
  m->layers = r.layers;
  m->rng = seed;
  assert_true(P <= MAXP && r.maxlen <= MAXL && r.layers <= MAXLAYERS);
  kvp_config cfg = kvp_test_config(r.layers, 1, r.head_dim, S, P, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  cfg.max_model_length = r.maxlen;
  cfg.max_num_pages_per_req = (r.maxlen + S - 1) / S;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &m->cache));
  kvp_pool_options o = KVP_POOL_OPTIONS_INIT;
  o.max_sequences = MAXS;
  o.flags = r.prefix ? 0 : KVP_POOL_FLAG_NO_PREFIX_CACHE;
  assert_kvp_ok(kvp_pool_create(m->cache, &o, &m->pool));
  for (int l = 0; l < r.layers; ++l)
    for (int v = 0; v < 2; ++v) {
      kvp_tensor kt;
      assert_kvp_ok(kvp_cache_get_view(m->cache, (uint32_t)l, v ? KVP_VIEW_VALUES : KVP_VIEW_KEYS, &kt));
      m->kv[l][v] = (float *)kt.data;
      m->page_stride = kt.strides[0];
      m->row_stride = kt.strides[1];
    }
  open_tiers(m, r.tiers);
  if (m->ntiers > 0)
    for (int b = 0; b < NBASE; ++b)
      for (int i = 0; i < MAXL; ++i) m->base[b][i] = (int32_t)kvp_test_rand_range(&m->rng, 0, 1000);
  m->isfree[0] = 0;
  for (int p = 1; p < P; ++p) m->isfree[p] = 1;
  m->nfree = P - 1;
  for (long op = 0; op < num_ops; ++op) {
    int kind;
    if (m->ntiers > 0 && kvp_test_rand_range(&m->rng, 0, 9) == 0) {
      kind = 8;
    } else {
      const int64_t x = kvp_test_rand_range(&m->rng, 0, 99);
      if (x < 22) kind = 0;
      else if (x < 52) kind = 1;
      else if (x < 60) kind = 2;
      else if (x < 68) kind = 3;
      else if (x < 76) kind = 4;
      else if (x < 95) kind = 5;
      else if (x < 99) kind = 6;
      else kind = 7;
    }
    switch (kind) {
      case 0: op_add(m); break;
      case 1: op_append(m); break;
      case 2: op_set_computed(m); break;
      case 3: op_truncate(m); break;
      case 4: op_fork(m); break;
      case 5: op_free(m); break;
      case 6: op_stale(m); break;
      case 7:
        if (kvp_test_rand_range(&m->rng, 0, 4) == 0) op_clear(m);
        break;
      default: op_behind(m); break;
    }
    ++m->ops[kind];
    compare(m, op);
  }
  /* the run must have exercised what it claims to */
  printf("# S=%d P=%d: %ld ops, %lld evictions, %lld copy-on-writes, %lld of %lld prompt tokens reused\n", S, P,
         num_ops, (long long)m->evictions, (long long)m->cow, (long long)m->reused_tokens,
         (long long)m->prompt_tokens);
  assert_true(m->cow > 10);
  if (r.prefix) {
    assert_true(m->evictions > 10);
    assert_true(m->reused_tokens > 100);
  } else {
    assert_int_equal(m->evictions + m->reused_tokens, 0);
  }
  if (m->ntiers > 0) {
    int64_t rejected = 0, errors = 0;
    for (int ti = 0; ti < m->ntiers; ++ti) {
      const kvp_pool_tier_stats *st = &m->tier[ti].st;
      printf("#   tier %d (%s): %lld pages restored of %lld asked, %lld rejected, %lld errors, %lld written\n", ti,
             m->tier[ti].dir ? "directory" : "memory", (long long)st->hits, (long long)st->lookups,
             (long long)st->rejected, (long long)st->errors, (long long)st->blocks_written);
      if (st->hits == 0) fail_msg("tier %d restored nothing", ti);
      rejected += st->rejected;
      errors += st->errors;
    }
    printf("#   %lld evicted pages not rewritten to the tier they came from, which had dropped them\n",
           (long long)m->held_gone);
    assert_true(m->restored > 50 && rejected > 0 && errors > 0 && m->back_ops > 100 && m->held_gone > 0);
    int in_place = 0;
    for (int ti = 0; ti < m->ntiers; ++ti) in_place |= !m->tier[ti].queued;
    if (in_place) {
      printf("#   memory tiers: %lld pages taken by groups of several blocks, %lld blocks rejected after a take\n",
             (long long)m->group_pages, (long long)m->late_rejects);
      assert_true(m->group_pages > 0 && m->late_rejects > 0);
    }
  }
  while (live_count(m) > 0) op_free(m);
  compare(m, num_ops);
  kvp_pool_stats ps;
  ps.struct_size = sizeof ps;
  assert_kvp_ok(kvp_pool_get_stats(m->pool, &ps));
  assert_int_equal(ps.used_pages, 0);
  assert_int_equal(ps.free_pages + ps.evictable_pages, P - 1);
  assert_kvp_ok(kvp_pool_destroy(m->pool));
  close_tiers(m);
  assert_kvp_ok(kvp_cache_destroy(m->cache));
  test_free(m);
}

static void test_pool_model__page4_random_ops(void **state) {
  (void)state;
  run_model((run_spec){.S = 4, .P = 24, .maxlen = 48, .layers = 1, .head_dim = 128, .prefix = 1, .tiers = "",
                       .seed = 0x9E3779B97F4A7C15ull, .ops = 20000});
}

static void test_pool_model__page2_random_ops(void **state) {
  (void)state;
  run_model((run_spec){.S = 2, .P = 32, .maxlen = 40, .layers = 1, .head_dim = 128, .prefix = 1, .tiers = "",
                       .seed = 0xD1B54A32D192ED03ull, .ops = 20000});
}

static void test_pool_model__page8_random_ops(void **state) {
  (void)state;
  run_model((run_spec){.S = 8, .P = 12, .maxlen = 64, .layers = 1, .head_dim = 128, .prefix = 1, .tiers = "",
                       .seed = 0x2545F4914F6CDD1Dull, .ops = 20000});
}

static void test_pool_model__no_prefix_cache_random_ops(void **state) {
  (void)state;
  run_model((run_spec){.S = 4, .P = 20, .maxlen = 48, .layers = 1, .head_dim = 128, .prefix = 0, .tiers = "",
                       .seed = 0x8CB92BA72F3D8DD7ull, .ops = 10000});
}

/* Storage tiers: one small memory store. */
static void test_pool_model__memory_tier_random_ops(void **state) {
  (void)state;
  run_model((run_spec){.S = 4, .P = 16, .maxlen = 40, .layers = 2, .head_dim = 32, .prefix = 1, .tiers = "m16",
                       .seed = 0x94D049BB133111EBull, .ops = 20000});
}

/* A memory store in front of a directory store. */
static void test_pool_model__memory_and_directory_tiers_random_ops(void **state) {
  (void)state;
  run_model((run_spec){.S = 4, .P = 16, .maxlen = 40, .layers = 2, .head_dim = 32, .prefix = 1, .tiers = "m8d24",
                       .seed = 0xBF58476D1CE4E5B9ull, .ops = 20000});
}

/* A directory store as tier 0, then two memory stores. */
static void test_pool_model__three_tiers_random_ops(void **state) {
  (void)state;
  run_model((run_spec){.S = 2, .P = 20, .maxlen = 32, .layers = 2, .head_dim = 32, .prefix = 1, .tiers = "d16m8m12",
                       .seed = 0x5851F42D4C957F2Dull, .ops = 20000});
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pool_model__page4_random_ops),
      cmocka_unit_test(test_pool_model__page2_random_ops),
      cmocka_unit_test(test_pool_model__page8_random_ops),
      cmocka_unit_test(test_pool_model__no_prefix_cache_random_ops),
      cmocka_unit_test(test_pool_model__memory_tier_random_ops),
      cmocka_unit_test(test_pool_model__memory_and_directory_tiers_random_ops),
      cmocka_unit_test(test_pool_model__three_tiers_random_ops),
  };
  return cmocka_run_group_tests_name("pool_model", tests, NULL, NULL);
}
