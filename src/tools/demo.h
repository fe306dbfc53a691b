/* The pieces of `kvp demo` (kvp_demo.c runs the serving loop): the tiny model and its dense
 * float64 reference (demo_model.c), and the checks of the cache against that reference
 * (demo_check.c). */
#ifndef KVP_DEMO_H
#define KVP_DEMO_H

#include <stdint.h>

#include "kvpages.h"

/* One attention layer of a Llama-3.2-1B-like model: 32 query heads over 8 KV heads of 64
 * (grouped-query attention, 4 query heads per KV head), fed by a 128-wide hidden state. */
#define DEMO_Q_HEADS 32
#define DEMO_KV_HEADS 8
#define DEMO_HEAD_DIM 64
#define DEMO_HIDDEN 128
#define DEMO_Q_WIDTH (DEMO_Q_HEADS * DEMO_HEAD_DIM)
#define DEMO_KV_WIDTH (DEMO_KV_HEADS * DEMO_HEAD_DIM)
#define DEMO_MAX_LEN 1024

/* The model: per layer, seeded random projections hidden -> q, k, v. */
typedef struct demo_model {
  int64_t layers;
  float softmax_scale; /* 1/sqrt(head_dim), passed to kvp_attention as the model's own scale */
  float *wq, *wk, *wv; /* per layer, row-major [DEMO_HIDDEN][width] */
} demo_model;

/* One sequence of the demo: its tokens and what the reference recomputed for them. */
typedef struct demo_seq {
  int id;              /* printed name */
  int arrival;         /* step at which it arrives */
  int64_t prompt, gen; /* prompt tokens, tokens to generate */
  int samples;         /* 2: fork after the prompt */
  int live, done;
  kvp_seq_id seq;
  int64_t length;   /* tokens in the sequence (prompt + generated so far) */
  int64_t computed; /* tokens whose K/V is in the cache */
  int64_t reused;   /* prompt tokens served from the prefix cache */
  int shares_pages;  /* attends over pages it did not write (a prefix-cache hit, or a fork) */
  int32_t tokens[DEMO_MAX_LEN];
  uint32_t state[DEMO_MAX_LEN]; /* running hash of tokens[0..pos]: what the layers below give */
  /* The reference's own K/V of every position, recomputed from the tokens (never read from the
   * cache): [layers][capacity][DEMO_KV_WIDTH], positions [0, known) filled. */
  float *keys, *values;
  int64_t capacity, known;
} demo_seq;

/* The storage tiers of a run (demo_tiers.c): memory, then a directory store and a Redis store. */
typedef struct demo_tiers {
  kvp_store *stores[3];
  const char *names[3];
  int count;
} demo_tiers;

/* Gives the pool a memory tier, then the directory `disk` and the Redis URL `redis` (either may
 * be NULL). Returns 0, or 1 with the error printed (the stores opened so far stay in `t`). */
int demo_tiers_open(demo_tiers *t, kvp_pool *pool, const char *disk, const char *redis);
/* Releases the stores (after the pool that uses them). */
void demo_tiers_close(demo_tiers *t);
/* Persists the pool's cached prefix pages to every tier, then prints where the reused prompt
 * tokens came from and the prefill time the tiers saved (`token_s`: the run's measured compute
 * per token of its steps with prefill rows; `add_s`: the run's time in kvp_pool_add_sequence).
 * Returns 0 or 1. */
int demo_tiers_report(demo_tiers *t, kvp_pool *pool, int64_t reused_tokens, double add_s, double token_s);

/* A 32-bit integer hash (the demo's source of deterministic pseudo-random numbers). */
uint32_t demo_mix32(uint32_t x);

int demo_model_init(demo_model *m, int64_t layers);
void demo_model_free(demo_model *m);

/* The query of a position in a layer ([DEMO_Q_WIDTH], f32). */
void demo_query(const demo_model *m, int64_t layer, uint32_t state, float *q);
/* Sets tokens[pos] and the running state that everything at that position depends on. */
void demo_set_token(demo_seq *s, int64_t pos, int32_t tok);
/* Gives the sequence room for `capacity` positions of reference K/V. Returns 0, or -1 when out
 * of memory. */
int demo_seq_reserve(demo_seq *s, int64_t layers, int64_t capacity);
/* Copies the reference K/V of `from` (a fork's parent) into `to`. Returns 0 or -1. */
int demo_seq_copy_reference(demo_seq *to, const demo_seq *from, int64_t layers);
/* Recomputes the reference K/V of positions [known, upto) in every layer. */
void demo_seq_extend(const demo_model *m, demo_seq *s, int64_t upto);
void demo_seq_free(demo_seq *s);
/* Dense float64 attention of the query at position `pos` over positions [0, pos] of the
 * sequence's reference K/V in one layer: out [DEMO_Q_WIDTH]. */
void demo_reference(const demo_model *m, const demo_seq *s, int64_t layer, int64_t pos, const float *q,
                    double *out);

/* Compares a step's attention output rows of one sequence with the reference: rows `first`
 * onwards of `out` ([*, DEMO_Q_WIDTH], f32) hold positions [pos0, pos0 + n). Raises *max_err;
 * returns the number of elements outside the f32 tolerance of ATTENTION.md §6.2. */
int64_t demo_check_rows(const demo_model *m, const demo_seq *s, int64_t layer, const float *q, const float *out,
                        int64_t first, int64_t pos0, int64_t n, double *max_err);
/* Reads every token of a finished sequence back through the key and value views of every
 * layer, using the page-table row the pool gives for it, and compares it with the reference's
 * K/V. Returns the number of mismatching elements, or -1 with the error printed. */
int64_t demo_check_readback(kvp_cache *cache, kvp_pool *pool, const demo_seq *s, int64_t layers, int64_t page_size,
                            kvp_dtype dt);

#endif
