/*
 * PetHash: the persistent index of one table.
 *
 * PM holds buckets of 16 slots, each an 8-byte key and an 8-byte value word
 * (ref: slab index + 1, 0 = empty); a bucket is 256 bytes, one Optane XPLine.
 * DRAM holds what can be rebuilt at recovery: per bucket a 1-byte tag per slot,
 * a count, an overflow counter (keys that probed past this bucket, so a miss
 * stops early) and a seqlock version that lets reads go without locks.
 * Probing uses an odd, tag-derived step, so it visits every bucket.
 *
 * Writers must hold the table's write lock; readers need nothing.
 */
#ifndef EMBPS_PETHASH_H
#define EMBPS_PETHASH_H

#include "pm_region.h"

#include <stdatomic.h>
#include <stdint.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define PH_SLOTS 16

typedef struct {
    uint64_t key;
    _Atomic uint64_t ref;
} ph_slot;

typedef struct {
    ph_slot slot[PH_SLOTS];
} ph_bucket;

typedef struct {
    _Atomic uint32_t version;  /* odd while a writer changes the bucket */
    uint8_t overflow;          /* saturating at 255: then it never decrements */
    uint8_t count;
    uint8_t pad[10];
    uint8_t tags[PH_SLOTS];    /* 0 = empty, else 0x80 | 7 hash bits */
} __attribute__((aligned(32))) ph_meta;

typedef struct {
    ph_bucket *buckets;        /* in PM */
    ph_meta *meta;             /* in DRAM */
    size_t meta_bytes;
    uint64_t mask;             /* n_buckets - 1 */
} pethash;

/* Where a key lives: bucket and slot, or slot == NULL. */
typedef struct {
    uint64_t bucket;
    ph_slot *slot;
} ph_pos;

static inline uint64_t ph_home(const pethash *ph, uint64_t h) { return (h >> 8) & ph->mask; }
static inline uint8_t ph_tag(uint64_t h) { return (uint8_t)(0x80 | (h & 0x7F)); }
static inline uint64_t ph_step(uint64_t h) { return 2 * (uint64_t)ph_tag(h) + 1; }

/* Bit i set when slot i's tag equals tag. */
static inline unsigned ph_tag_matches(const ph_meta *m, uint8_t tag)
{
#ifdef __SSE2__
    __m128i tags = _mm_load_si128((const __m128i *)m->tags);
    return (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(tags, _mm_set1_epi8((char)tag)));
#else
    unsigned bits = 0;
    for (unsigned i = 0; i < PH_SLOTS; i++)
        bits |= (unsigned)(m->tags[i] == tag) << i;
    return bits;
#endif
}

/* Batched lookups run these stages ahead of pethash_get: the tags, then the slot they point at. */
static inline void ph_prefetch_meta(const pethash *ph, uint64_t h)
{
    __builtin_prefetch(&ph->meta[ph_home(ph, h)]);
}

/* Prefetches the first slot of the key's home bucket whose tag matches and returns its index, the
 * guess pethash_get_guessed checks; PH_SLOTS if no tag matches (then the next bucket's first slot is
 * prefetched: no branch to mispredict, and a prefetch never faults). */
static inline unsigned ph_prefetch_slot(const pethash *ph, uint64_t h)
{
    const uint64_t b = ph_home(ph, h);
    const unsigned i = (unsigned)__builtin_ctz(ph_tag_matches(&ph->meta[b], ph_tag(h)) | 1u << PH_SLOTS);
    __builtin_prefetch(&ph->buckets[b].slot[i]);
    return i;
}

int pethash_init(pethash *ph, void *pm_buckets, uint64_t n_buckets);
void pethash_free(pethash *ph);

/* Lock-free lookup: the key's ref, or 0.  h = mix64(key).  Inline: batched lookups call it once per key,
 * and a call with its loops set up costs as much as the rest of a cached lookup. */
static inline uint64_t pethash_get(const pethash *ph, uint64_t key, uint64_t h)
{
    const uint8_t tag = ph_tag(h);
    const uint64_t step = ph_step(h);
    uint64_t b = ph_home(ph, h);
    for (uint64_t probes = 0; probes <= ph->mask; probes++, b = (b + step) & ph->mask) {
        const ph_meta *m = &ph->meta[b];
        uint64_t ref;
        uint8_t overflow;
        uint32_t v;
        do {
            while ((v = atomic_load_explicit(&m->version, memory_order_acquire)) & 1)
                ;
            ref = 0;
            for (unsigned bits = ph_tag_matches(m, tag); bits; bits &= bits - 1) {
                const ph_slot *s = &ph->buckets[b].slot[__builtin_ctz(bits)];
                if (s->key == key) {
                    ref = atomic_load_explicit(&s->ref, memory_order_acquire);
                    break;
                }
            }
            overflow = m->overflow;
            atomic_thread_fence(memory_order_acquire);
        } while (atomic_load_explicit(&m->version, memory_order_relaxed) != v);
        if (ref)
            return ref;
        if (!overflow)
            return 0;
    }
    return 0;
}

/* Lock-free lookup of a key whose slot was guessed by ph_prefetch_slot: its ref, or 0.  The guess, read
 * outside any version window, is only a hint: the slot holds the key if its key matches and its ref is
 * live within one stable version of the bucket (a slot changes key only under its bucket's version,
 * and keys are unique).  Any other case -- no guess, a tag shared with another key, a writer at work, a
 * key past its home bucket -- takes pethash_get's full probe. */
static inline uint64_t pethash_get_guessed(const pethash *ph, uint64_t key, uint64_t h, unsigned guess)
{
    if (guess < PH_SLOTS) {
        const uint64_t b = ph_home(ph, h);
        const ph_meta *m = &ph->meta[b];
        const ph_slot *s = &ph->buckets[b].slot[guess];
        const uint32_t v = atomic_load_explicit(&m->version, memory_order_acquire);
        if (s->key == key) {
            const uint64_t ref = atomic_load_explicit(&s->ref, memory_order_acquire);
            atomic_thread_fence(memory_order_acquire);
            if (ref && !(v & 1) && atomic_load_explicit(&m->version, memory_order_relaxed) == v)
                return ref;
        }
    }
    return pethash_get(ph, key, h);
}

/* Writer-side lookup. */
ph_pos pethash_find(const pethash *ph, uint64_t key, uint64_t h);
/* Writer: puts key -> ref in a free slot and flushes it (the caller drains).
 * The caller has checked capacity; returns slot NULL only if every bucket is full. */
ph_pos pethash_insert(pethash *ph, pm_region *pm, uint64_t key, uint64_t h, uint64_t ref);
/* Writer: empties the slot at pos and flushes it (the caller drains). */
void pethash_remove(pethash *ph, pm_region *pm, ph_pos pos, uint64_t h);

/* Recovery rebuilds the DRAM side from the slots found live in PM in two passes.  The first, for every
 * live slot, sets its tag and its bucket's count; buckets in disjoint ranges may be restored by threads
 * at once.  Returns 0 (restoring nothing) if an earlier restored slot of the bucket holds the same key. */
static inline int ph_restore_slot(pethash *ph, uint64_t bucket, unsigned i, uint64_t key, uint64_t h)
{
    ph_meta *m = &ph->meta[bucket];
    const uint8_t tag = ph_tag(h);
    for (unsigned bits = ph_tag_matches(m, tag); bits; bits &= bits - 1)
        if (ph->buckets[bucket].slot[__builtin_ctz(bits)].key == key)
            return 0;
    m->tags[i] = tag;
    m->count++;
    return 1;
}
/* The second pass, after the first is done, by one thread: a key restored in a bucket other than its
 * home counts in the overflow of each bucket it probed past.  Returns 0 if one of those holds the key. */
int pethash_restore_probe(pethash *ph, uint64_t bucket, uint64_t key, uint64_t h);

#endif
