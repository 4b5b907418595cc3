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

/* Recovery: claims the slab of a live ref; 0 if it was already claimed (corruption). */
int slab_pool_claim(slab_pool *p, uint64_t ref);
/* Recovery visits refs in index order, so their bits lie at random in the bitmap: a claim's word is
 * fetched while earlier claims are made. */
static inline void slab_pool_prefetch_claim(const slab_pool *p, uint64_t ref)
{
    if (ref && ref <= p->n_slabs)
        __builtin_prefetch(&p->used[(ref - 1) / 64], 1);
}
/* Recovery: turns the claimed set into the allocator's free lists. */
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
