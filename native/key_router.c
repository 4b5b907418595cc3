/* key_router.c -- jump consistent hash, placement-table routing and the split by shard over a batch (embps_key_router.h). */
#include "embps_key_router.h"

#include <string.h>

#include "status.h"

/* Slots are computed this many keys ahead of their use and prefetched meanwhile: keys drawn over tens
 * of millions of rows miss the cache nearly every time, and a dozen misses in flight hide most of it. */
#define PREFETCH_AHEAD 16u
#define ID_MASK ((UINT64_C(1) << EMBPS_ROUTER_FEATURE_SHIFT) - 1)

static inline int64_t jump_hash(uint64_t key, uint32_t n_shards)
{
    int64_t b = -1, j = 0;
    while (j < (int64_t)n_shards) {
        b = j;
        key = key * UINT64_C(2862933555777941757) + 1;
        j = (int64_t)((double)(b + 1) * ((double)(UINT64_C(1) << 31) / (double)((key >> 33) + 1)));
    }
    return b;
}

int embps_jump_hash_batch(const uint64_t *keys, uint64_t n, uint32_t n_shards, int64_t *shard)
{
    if (n_shards < 1)
        return fail(EMBPS_E_INVALID_ARGUMENT, "n_shards must be positive");
    if (n && (!keys || !shard))
        return fail(EMBPS_E_INVALID_ARGUMENT, "keys and shard are required");
    for (uint64_t i = 0; i < n; i++)
        shard[i] = jump_hash(keys[i], n_shards);
    return EMBPS_OK;
}

static int table_check(const embps_router_table *t)
{
    if (!t || t->n_shards < 1 || t->n_features < 1 || t->n_slots < 1)
        return fail(EMBPS_E_INVALID_ARGUMENT, "a router table needs shards, features and slots");
    if (t->owner_bytes != 2 && t->owner_bytes != 4)
        return fail(EMBPS_E_INVALID_ARGUMENT, "owner_bytes must be 2 or 4, not %u", t->owner_bytes);
    if (!t->first || !t->span || !t->delta || !t->owner_by_slot || (t->n_sparse && (!t->sparse_keys || !t->sparse_owner)))
        return fail(EMBPS_E_INVALID_ARGUMENT, "a router table's arrays are required");
    return EMBPS_OK;
}

/* The slot of a key, or n_slots (no slot) when its feature does not list its id. */
static inline uint64_t slot_of(const embps_router_table *t, uint64_t key)
{
    uint64_t feature = key >> EMBPS_ROUTER_FEATURE_SHIFT;
    if (feature >= t->n_features)
        feature = t->n_features - 1;
    uint64_t id = key & ID_MASK;
    if (id - t->first[feature] >= t->span[feature])
        return t->n_slots;
    uint64_t slot = id + t->delta[feature];
    return slot < t->n_slots ? slot : t->n_slots;
}

static inline const void *slot_address(const embps_router_table *t, uint64_t slot)
{
    return (const char *)t->owner_by_slot + slot * t->owner_bytes;
}

/* The owner in a slot, or -1 for none (no slot, or the unknown value). */
static inline int64_t slot_owner(const embps_router_table *t, uint64_t slot)
{
    if (slot >= t->n_slots)
        return -1;
    if (t->owner_bytes == 2) {
        uint16_t owner = ((const uint16_t *)t->owner_by_slot)[slot];
        return owner == UINT16_MAX ? -1 : (int64_t)owner;
    }
    uint32_t owner = ((const uint32_t *)t->owner_by_slot)[slot];
    return owner == UINT32_MAX ? -1 : (int64_t)owner;
}

/* The owner of a key the dense slots do not list: sparse if there, else by jump hash. */
static int64_t fallback_owner(const embps_router_table *t, uint64_t key)
{
    uint64_t lo = 0, hi = t->n_sparse;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (t->sparse_keys[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < t->n_sparse && t->sparse_keys[lo] == key)
        return t->sparse_owner[lo];
    return jump_hash(key, t->n_shards);
}

int embps_router_route(const embps_router_table *t, const uint64_t *keys, uint64_t n, int64_t *shard)
{
    int status = table_check(t);
    if (status != EMBPS_OK)
        return status;
    if (n && (!keys || !shard))
        return fail(EMBPS_E_INVALID_ARGUMENT, "keys and shard are required");
    uint64_t ahead[PREFETCH_AHEAD];   /* a ring of the slots of keys i .. i + PREFETCH_AHEAD - 1 */
    for (uint64_t i = 0; i < PREFETCH_AHEAD && i < n; i++) {
        ahead[i] = slot_of(t, keys[i]);
        __builtin_prefetch(slot_address(t, ahead[i] < t->n_slots ? ahead[i] : 0));
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t slot = ahead[i % PREFETCH_AHEAD];
        if (i + PREFETCH_AHEAD < n) {
            uint64_t next = slot_of(t, keys[i + PREFETCH_AHEAD]);
            ahead[i % PREFETCH_AHEAD] = next;
            if (next < t->n_slots)
                __builtin_prefetch(slot_address(t, next));
        }
        int64_t owner = slot_owner(t, slot);
        shard[i] = owner >= 0 ? owner : fallback_owner(t, keys[i]);
    }
    return EMBPS_OK;
}

int embps_router_split(const int64_t *shard, const uint64_t *keys, uint64_t n, uint32_t n_shards,
                       int64_t *order, uint64_t *keys_out, int64_t *bounds)
{
    if (n_shards < 1 || !bounds || (n && (!shard || !keys || !order || !keys_out)))
        return fail(EMBPS_E_INVALID_ARGUMENT, "a split needs shards, and arrays for its batch");
    memset(bounds, 0, ((size_t)n_shards + 1) * sizeof(*bounds));
    for (uint64_t i = 0; i < n; i++) {
        if ((uint64_t)shard[i] >= n_shards) {
            memset(bounds, 0, ((size_t)n_shards + 1) * sizeof(*bounds));
            return fail(EMBPS_E_INVALID_ARGUMENT, "key %llu was routed to shard %lld, of %u",
                        (unsigned long long)i, (long long)shard[i], n_shards);
        }
        bounds[shard[i] + 1]++;
    }
    for (uint32_t s = 0; s < n_shards; s++)
        bounds[s + 1] += bounds[s];
    /* bounds[s] is now where shard s starts; walking it forward fills shard s and leaves bounds[s] at
     * shard s + 1's start, so shifting back restores the starts. */
    for (uint64_t i = 0; i < n; i++) {
        int64_t at = bounds[shard[i]]++;
        order[at] = (int64_t)i;
        keys_out[at] = keys[i];
    }
    memmove(bounds + 1, bounds, (size_t)n_shards * sizeof(*bounds));
    bounds[0] = 0;
    return EMBPS_OK;
}
