/*
 * embps native key router: the per-key loops of routing a batch of keys to shards (the tables are
 * built by embps.client.routing; this code only runs over a batch).
 *
 * Jump consistent hash is Lamping & Veach's, "A Fast, Minimal Memory, Consistent Hash Algorithm"
 * (2014), figure 1, bit for bit.  A placement table routes a key as follows: its feature
 * f = key >> EMBPS_ROUTER_FEATURE_SHIFT (features >= n_features count as n_features - 1, which lists
 * no ids) and id = key & (2^shift - 1); when id - first[f] < span[f] (unsigned, so ids below first
 * wrap past span), the owner is owner_by_slot[id + delta[f]] (mod 2^64), unless that slot holds the
 * unknown value (the owner type's maximum); other keys are binary-searched among sparse_keys, and
 * keys found nowhere go by jump hash over n_shards.
 *
 * Splitting a batch by shard, after routing, is a counting sort in one pass over it.
 *
 * Every call returns an embps_status (embps_errormsg() says why it failed).  Tables are borrowed,
 * never written: any number of threads may route through one table at once.
 */
#ifndef EMBPS_KEY_ROUTER_H
#define EMBPS_KEY_ROUTER_H

#include "embps_store.h"

#include <stdint.h>

#define EMBPS_ROUTER_FEATURE_SHIFT 40u

typedef struct {
    uint32_t n_shards;              /* >= 1 */
    uint64_t n_features;            /* >= 1: entries of first, span and delta */
    const uint64_t *first, *span, *delta;
    /* n_slots owners, each owner_bytes wide (2: uint16_t, 4: uint32_t); the maximum of the type
     * means unknown.  n_slots >= 1. */
    const void *owner_by_slot;
    uint64_t n_slots;
    uint32_t owner_bytes;
    const uint64_t *sparse_keys;    /* n_sparse keys, ascending */
    const uint16_t *sparse_owner;   /* their owners */
    uint64_t n_sparse;
} embps_router_table;

/* shard[i] = the jump consistent hash of keys[i] over n_shards (>= 1) buckets. */
EMBPS_API int embps_jump_hash_batch(const uint64_t *keys, uint64_t n, uint32_t n_shards, int64_t *shard);
/* shard[i] = the shard of keys[i] by the placement table (see above). */
EMBPS_API int embps_router_route(const embps_router_table *table, const uint64_t *keys, uint64_t n,
                                 int64_t *shard);
/* Groups a routed batch by shard, stably (a counting sort): order[] holds the batch positions of shard
 * 0's keys, then of shard 1's, ..., each shard's in batch order; keys_out[j] = keys[order[j]]; shard s
 * has [bounds[s], bounds[s + 1]) of them (n_shards + 1 bounds).  INVALID_ARGUMENT, with order and
 * keys_out untouched, when a shard is outside [0, n_shards). */
EMBPS_API int embps_router_split(const int64_t *shard, const uint64_t *keys, uint64_t n, uint32_t n_shards,
                                 int64_t *order, uint64_t *keys_out, int64_t *bounds);

#endif
