/* slab_pool.c -- the DRAM allocator of a table's slab pool, with epoch-based reclamation. */
#include "slab_pool.h"

#include "status.h"

#include <sched.h>
#include <stdlib.h>
#include <time.h>

int slab_pool_init(slab_pool *p, void *base, uint64_t n_slabs, uint32_t slab_bytes)
{
    *p = (slab_pool){.base = base, .n_slabs = n_slabs, .slab_bytes = slab_bytes};
    p->used = calloc((n_slabs + 63) / 64, sizeof(uint64_t));
    p->free_stack = malloc(n_slabs * sizeof(uint64_t));
    if (!p->used || !p->free_stack) {
        slab_pool_free(p);
        return fail(EMBPS_E_NOMEM, "out of memory for the allocator of %llu slabs", (unsigned long long)n_slabs);
    }
    return EMBPS_OK;
}

void slab_pool_free(slab_pool *p)
{
    free(p->used);
    free(p->free_stack);
    free(p->retired);
    p->used = p->free_stack = NULL;
    p->retired = NULL;
}

int slab_pool_is_used(const slab_pool *p, uint64_t ref)
{
    uint64_t i = ref - 1;
    return (p->used[i / 64] >> (i % 64)) & 1;
}

uint64_t *slab_pool_new_claims(const slab_pool *p)
{
    return calloc((p->n_slabs + 63) / 64, sizeof(uint64_t));
}

uint64_t slab_pool_merge_claims(slab_pool *p, const uint64_t *claims)
{
    uint64_t twice = 0;
    for (uint64_t w = 0; w < (p->n_slabs + 63) / 64; w++) {
        if (!twice && (p->used[w] & claims[w]))
            twice = w * 64 + (uint64_t)__builtin_ctzll(p->used[w] & claims[w]) + 1;
        p->used[w] |= claims[w];
    }
    return twice;
}

void slab_pool_finish_recovery(slab_pool *p)
{
    const uint64_t words = (p->n_slabs + 63) / 64;
    uint64_t top = words;
    while (top && !p->used[top - 1])
        top--;
    p->high_water = top ? (top - 1) * 64 + 64 - (uint64_t)__builtin_clzll(p->used[top - 1]) : 0;
    p->n_used = p->n_free = 0;
    for (uint64_t w = 0; w < top; w++) {
        p->n_used += (uint64_t)__builtin_popcountll(p->used[w]);
        uint64_t holes = ~p->used[w];
        for (; holes; holes &= holes - 1) {
            uint64_t i = w * 64 + (uint64_t)__builtin_ctzll(holes);
            if (i < p->high_water)
                p->free_stack[p->n_free++] = i;
        }
    }
}

uint64_t epoch_enter(slab_pool *p)
{
    for (;;) {
        uint64_t e = atomic_load(&p->epoch);
        atomic_fetch_add(&p->readers[e & 1], 1);
        if (atomic_load(&p->epoch) == e)
            return e;
        atomic_fetch_sub(&p->readers[e & 1], 1);
    }
}

void epoch_exit(slab_pool *p, uint64_t epoch)
{
    atomic_fetch_sub_explicit(&p->readers[epoch & 1], 1, memory_order_release);
}

/* A slab retired in epoch e is unreachable for every reader once the epoch is
 * e + 2: advancing to e + 1 and to e + 2 each waited for the older counter to drain. */
void slab_reclaim(slab_pool *p)
{
    uint64_t e = atomic_load(&p->epoch);
    if (atomic_load(&p->readers[(e + 1) & 1]) == 0)
        atomic_store(&p->epoch, ++e);
    uint64_t kept = 0;
    for (uint64_t i = 0; i < p->n_retired; i++) {
        retired_slab r = p->retired[i];
        if (r.epoch + 2 <= e) {
            p->used[r.slab / 64] &= ~(1ull << (r.slab % 64));
            p->free_stack[p->n_free++] = r.slab;
            p->n_used--;
        } else {
            p->retired[kept++] = r;
        }
    }
    p->n_retired = kept;
}

static int take_free(slab_pool *p, uint64_t *ref)
{
    uint64_t i;
    if (p->n_free)
        i = p->free_stack[--p->n_free];
    else if (p->high_water < p->n_slabs)
        i = p->high_water++;
    else
        return 0;
    p->used[i / 64] |= 1ull << (i % 64);
    p->n_used++;
    *ref = i + 1;
    return 1;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The pool runs dry only while readers pin retired slabs: a lookup for the length of its batch, a
 * data-path reply for at most its send timeout.  Waiting for them (yielding at first, then napping)
 * slows a writer down behind a slow reader instead of failing it. */
static int wait_for_reclamation(slab_pool *p, uint64_t *ref)
{
    if (!p->n_retired)
        return fail(EMBPS_E_CAPACITY, "slab pool exhausted: %llu slabs in use", (unsigned long long)p->n_used);
    uint64_t give_up_ms = 0;
    struct timespec nap = {0, 50000};
    for (int attempt = 0;; attempt++) {
        slab_reclaim(p);
        if (take_free(p, ref))
            return EMBPS_OK;
        if (attempt < 100) {
            sched_yield();
            continue;
        }
        uint64_t now = now_ms();
        if (!give_up_ms)
            give_up_ms = now + EMBPS_WRITE_WAIT_MS;
        else if (now >= give_up_ms)
            break;
        nanosleep(&nap, NULL);
        if (nap.tv_nsec < 10000000)
            nap.tv_nsec *= 2;
    }
    return fail(EMBPS_E_CAPACITY, "slab pool exhausted: %llu slabs in use, %llu awaiting reclamation by readers "
                "that kept them beyond %u ms", (unsigned long long)p->n_used, (unsigned long long)p->n_retired,
                EMBPS_WRITE_WAIT_MS);
}

int slab_alloc(slab_pool *p, uint64_t *ref)
{
    return take_free(p, ref) ? EMBPS_OK : wait_for_reclamation(p, ref);
}

void slab_unalloc(slab_pool *p, uint64_t ref)
{
    uint64_t i = ref - 1;
    p->used[i / 64] &= ~(1ull << (i % 64));
    p->free_stack[p->n_free++] = i;
    p->n_used--;
}

void slab_retire(slab_pool *p, uint64_t ref)
{
    if (p->n_retired == p->cap_retired) {
        uint64_t cap = p->cap_retired ? 2 * p->cap_retired : 1024;
        retired_slab *grown = realloc(p->retired, cap * sizeof(*grown));
        if (!grown)
            return;  /* the slab stays allocated until the next open rebuilds the allocator */
        p->retired = grown;
        p->cap_retired = cap;
    }
    p->retired[p->n_retired++] = (retired_slab){ref - 1, atomic_load(&p->epoch)};
}
