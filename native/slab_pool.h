/*
 * The value pool of one table: fixed-size slabs in PM, one per row, holding the
 * row and its optimizer state.  The allocator lives in DRAM only: recovery
 * rebuilds it from the index, so a crash can never leak a slab.
 *
 * Slabs replaced or deleted are retired and reused only when no reader that
 * might still see them is left (epoch-based reclamation with two reader
 * counters).  Allocation and retirement need the table's write lock.
 */
#ifndef EMBPS_SLAB_POOL_H
#define EMBPS_SLAB_POOL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t slab, epoch;
} retired_slab;

typedef struct {
    char *base;                 /* in PM */
    uint64_t n_slabs;
    uint32_t slab_bytes;
    uint64_t *used;             /* bitmap */
    uint64_t *free_stack;       /* freed slabs below the high-water mark */
    uint64_t n_free, high_water, n_used;
    retired_slab *retired;
    uint64_t n_retired, cap_retired;
    _Alignas(64) _Atomic uint64_t epoch;
    _Alignas(64) _Atomic int64_t readers[2];
} slab_pool;

int slab_pool_init(slab_pool *p, void *base, uint64_t n_slabs, uint32_t slab_bytes);
void slab_pool_free(slab_pool *p);

static inline char *slab_at(const slab_pool *p, uint64_t ref) { return p->base + (ref - 1) * p->slab_bytes; }

/* Recovery claims the slab of each live ref in a bitmap of the pool's size: the pool's own (used), or
 * one per further thread, merged into it after.  A claim returns 0 if the slab was claimed already
 * (corruption); 1 <= ref <= n_slabs. */
static inline int slab_claim(uint64_t *claims, uint64_t ref)
{
    const uint64_t i = ref - 1, bit = 1ull << (i % 64);
    const int fresh = !(claims[i / 64] & bit);
    claims[i / 64] |= bit;
    return fresh;
}
/* Recovery visits refs in index order, so their bits lie at random in the bitmap: a claim's word is
 * fetched while earlier claims are made. */
static inline void slab_claim_prefetch(const uint64_t *claims, uint64_t n_slabs, uint64_t ref)
{
    if (ref && ref <= n_slabs)
        __builtin_prefetch(&claims[(ref - 1) / 64], 1);
}
/* An empty bitmap for claims (the caller frees it), or NULL: out of memory. */
uint64_t *slab_pool_new_claims(const slab_pool *p);
/* Adds claims to the pool's; returns the lowest ref claimed in both, or 0. */
uint64_t slab_pool_merge_claims(slab_pool *p, const uint64_t *claims);
/* Recovery, once every claim is merged: counts the claimed slabs and turns the rest into the free list. */
void slab_pool_finish_recovery(slab_pool *p);
int slab_pool_is_used(const slab_pool *p, uint64_t ref);

int slab_alloc(slab_pool *p, uint64_t *ref);
/* Returns a slab that was never published straight to the free list. */
void slab_unalloc(slab_pool *p, uint64_t ref);
void slab_retire(slab_pool *p, uint64_t ref);
void slab_reclaim(slab_pool *p);

uint64_t epoch_enter(slab_pool *p);
void epoch_exit(slab_pool *p, uint64_t epoch);

#endif
