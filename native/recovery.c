/* recovery.c -- a table's DRAM state rebuilt from its index in PM, on every core (see recovery.h). */
#include "recovery.h"

#include "optimizer.h"
#include "status.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

enum {
    RECOVER_AHEAD = 4,              /* buckets between prefetching a bucket's claims and making them */
    MAX_THREADS = 8,
    MIN_BUCKETS_PER_THREAD = 1 << 15,   /* 8 MB of slots: below that a thread costs more than it saves */
};
#define NONE UINT64_MAX

/* One thread's range of buckets and what it found there.  Positions are bucket * PH_SLOTS + slot. */
typedef struct {
    pethash *ph;
    slab_pool *pool;            /* worker 0 claims in the pool's bitmap, the others each in a copy: */
    uint64_t *used;             /* a bitmap shared by cores would bounce between their caches */
    uint64_t lo, hi;
    uint64_t rows;
    uint64_t impossible_at;     /* the first slot holding an impossible entry: the range stops there */
    uint64_t lowest_twice_ref;  /* the lowest slab whose claim failed */
    uint64_t twice_key_at;      /* the first slot whose key an earlier slot of its bucket holds */
    uint64_t *away;             /* slots whose key lives past its home bucket, for the second pass */
    size_t n_away, cap_away;
    int nomem;
    pthread_t thread;
} worker;

static int keep_away(worker *w, uint64_t pos)
{
    if (w->n_away == w->cap_away) {
        size_t cap = w->cap_away ? 2 * w->cap_away : 4096;
        uint64_t *grown = realloc(w->away, cap * sizeof(*grown));
        if (!grown)
            return 0;
        w->away = grown;
        w->cap_away = cap;
    }
    w->away[w->n_away++] = pos;
    return 1;
}

/* Refs lie at random in the pool, so their bitmap words are fetched buckets ahead; the tags are
 * written in bucket order. */
static void prefetch_bucket(const worker *w, uint64_t b)
{
    const ph_bucket *bucket = &w->ph->buckets[b];
    for (unsigned i = 0; i < PH_SLOTS; i++)
        slab_claim_prefetch(w->used, w->pool->n_slabs,
                            atomic_load_explicit(&bucket->slot[i].ref, memory_order_relaxed));
    __builtin_prefetch(&w->ph->meta[b], 1);
}

/* Returns 0 when the range must stop: an impossible entry, or no memory. */
static int restore_slot(worker *w, uint64_t b, unsigned i)
{
    const ph_slot *s = &w->ph->buckets[b].slot[i];
    const uint64_t ref = atomic_load_explicit(&s->ref, memory_order_relaxed), pos = b * PH_SLOTS + i;
    if (!ref)
        return 1;
    const uint64_t key = s->key;
    if (ref > w->pool->n_slabs || key == EMBPS_RESERVED_KEY) {
        w->impossible_at = pos;
        return 0;
    }
    if (!slab_claim(w->used, ref)) {
        if (ref < w->lowest_twice_ref)
            w->lowest_twice_ref = ref;
        return 1;
    }
    const uint64_t h = mix64(key);
    if (!ph_restore_slot(w->ph, b, i, key, h)) {
        if (w->twice_key_at == NONE)
            w->twice_key_at = pos;
        return 1;
    }
    w->rows++;
    if (ph_home(w->ph, h) != b && !keep_away(w, pos)) {
        w->nomem = 1;
        return 0;
    }
    return 1;
}

static void *restore_range(void *arg)
{
    worker *w = arg;
    for (uint64_t b = w->lo; b < w->hi; b++) {
        if (b + RECOVER_AHEAD < w->hi)
            prefetch_bucket(w, b + RECOVER_AHEAD);
        for (unsigned i = 0; i < PH_SLOTS; i++)
            if (!restore_slot(w, b, i))
                return NULL;
    }
    return NULL;
}

/* One thread per core this process may run on, each with a range worth a thread. */
static unsigned thread_count(uint64_t n_buckets)
{
    cpu_set_t cpus;
    uint64_t n = n_buckets / MIN_BUCKETS_PER_THREAD;
    if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0 && n > (uint64_t)CPU_COUNT(&cpus))
        n = (uint64_t)CPU_COUNT(&cpus);
    if (n > MAX_THREADS)
        n = MAX_THREADS;
    return n ? (unsigned)n : 1;
}

/* The first pass over n workers' ranges: worker 0 on this thread, the others on threads of their
 * own (or after it, on this one, should a thread not start). */
static void restore_ranges(worker *w, unsigned n)
{
    int started[MAX_THREADS] = {0};
    for (unsigned k = 1; k < n; k++)
        started[k] = pthread_create(&w[k].thread, NULL, restore_range, &w[k]) == 0;
    restore_range(&w[0]);
    for (unsigned k = 1; k < n; k++) {
        if (started[k])
            pthread_join(w[k].thread, NULL);
        else
            restore_range(&w[k]);
    }
}

/* What the first pass found, most fundamental first, each kind by its first place in the index, so
 * that the report does not depend on the split into ranges. */
static int first_pass_status(const worker *w, unsigned n, const char *name)
{
    uint64_t impossible_at = NONE, twice_ref = NONE, twice_key_at = NONE;
    for (unsigned k = 0; k < n; k++) {
        if (w[k].nomem)
            return fail(EMBPS_E_NOMEM, "out of memory recovering table %s", name);
        if (w[k].impossible_at < impossible_at)
            impossible_at = w[k].impossible_at;
        if (w[k].lowest_twice_ref < twice_ref)
            twice_ref = w[k].lowest_twice_ref;
        if (w[k].twice_key_at < twice_key_at)
            twice_key_at = w[k].twice_key_at;
    }
    if (impossible_at != NONE)
        return fail(EMBPS_E_CORRUPT, "table %s: bucket %llu slot %u holds an impossible entry", name,
                    (unsigned long long)(impossible_at / PH_SLOTS), (unsigned)(impossible_at % PH_SLOTS));
    if (twice_ref != NONE)
        return fail(EMBPS_E_CORRUPT, "table %s: slab %llu is referenced twice", name, (unsigned long long)twice_ref);
    if (twice_key_at != NONE)
        return fail(EMBPS_E_CORRUPT, "table %s: key %llu is held twice", name,
                    (unsigned long long)w->ph->buckets[twice_key_at / PH_SLOTS].slot[twice_key_at % PH_SLOTS].key);
    return EMBPS_OK;
}

/* The second pass, in index order: the few keys away from home, now that every tag is set. */
static int restore_probes(const worker *w, unsigned n, const char *name)
{
    pethash *ph = w->ph;
    for (unsigned k = 0; k < n; k++) {
        for (size_t j = 0; j < w[k].n_away; j++) {
            const uint64_t b = w[k].away[j] / PH_SLOTS, key = ph->buckets[b].slot[w[k].away[j] % PH_SLOTS].key;
            if (!pethash_restore_probe(ph, b, key, mix64(key)))
                return fail(EMBPS_E_CORRUPT, "table %s: key %llu is held twice", name, (unsigned long long)key);
        }
    }
    return EMBPS_OK;
}

/* Each worker's claims merged into the pool's: a slab claimed by two is referenced twice. */
static void merge_claims(worker *w, unsigned n)
{
    for (unsigned k = 1; k < n; k++) {
        uint64_t twice = slab_pool_merge_claims(w[k].pool, w[k].used);
        if (twice && twice < w[k].lowest_twice_ref)
            w[k].lowest_twice_ref = twice;
    }
}

static void free_workers(worker *w, unsigned n)
{
    for (unsigned k = 0; k < n; k++) {
        if (k)
            free(w[k].used);
        free(w[k].away);
    }
}

int recovery_rebuild(pethash *ph, slab_pool *pool, const char *name, uint64_t *rows)
{
    const uint64_t n_buckets = ph->mask + 1;
    const unsigned n = thread_count(n_buckets);
    worker w[MAX_THREADS];
    int nomem = 0;
    for (unsigned k = 0; k < n; k++) {
        w[k] = (worker){.ph = ph, .pool = pool, .used = k ? slab_pool_new_claims(pool) : pool->used,
                        .lo = n_buckets * k / n, .hi = n_buckets * (k + 1) / n,
                        .impossible_at = NONE, .lowest_twice_ref = NONE, .twice_key_at = NONE};
        nomem |= !w[k].used;
    }
    int rc = nomem ? fail(EMBPS_E_NOMEM, "out of memory recovering table %s", name) : EMBPS_OK;
    if (!rc) {
        restore_ranges(w, n);
        merge_claims(w, n);
        rc = first_pass_status(w, n, name);
    }
    if (!rc)
        rc = restore_probes(w, n, name);
    *rows = 0;
    for (unsigned k = 0; k < n; k++)
        *rows += w[k].rows;
    free_workers(w, n);
    if (!rc)
        slab_pool_finish_recovery(pool);
    return rc;
}
