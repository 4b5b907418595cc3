/* pethash.c -- PetHash, the persistent index of one table (its layout is described in pethash.h). */
#include "pethash.h"

#include "status.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int pethash_init(pethash *ph, void *pm_buckets, uint64_t n_buckets)
{
    ph->buckets = pm_buckets;
    ph->mask = n_buckets - 1;
    /* Tags are probed at random: a mapping of its own can get huge pages and spare the TLB. */
    ph->meta_bytes = n_buckets * sizeof(ph_meta);
    ph->meta = mmap(NULL, ph->meta_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ph->meta == MAP_FAILED) {
        ph->meta = NULL;
        return fail(EMBPS_E_NOMEM, "out of memory for %llu bucket tags", (unsigned long long)n_buckets);
    }
    madvise(ph->meta, ph->meta_bytes, MADV_HUGEPAGE);
    return EMBPS_OK;
}

void pethash_free(pethash *ph)
{
    if (ph->meta)
        munmap(ph->meta, ph->meta_bytes);
    ph->meta = NULL;
}

ph_pos pethash_find(const pethash *ph, uint64_t key, uint64_t h)
{
    const uint8_t tag = ph_tag(h);
    const uint64_t step = ph_step(h);
    uint64_t b = ph_home(ph, h);
    for (uint64_t probes = 0; probes <= ph->mask; probes++, b = (b + step) & ph->mask) {
        const ph_meta *m = &ph->meta[b];
        for (unsigned bits = ph_tag_matches(m, tag); bits; bits &= bits - 1) {
            ph_slot *s = &ph->buckets[b].slot[__builtin_ctz(bits)];
            if (s->key == key)
                return (ph_pos){b, s};
        }
        if (!m->overflow)
            break;
    }
    return (ph_pos){0, NULL};
}

static void begin_write(ph_meta *m)
{
    atomic_store_explicit(&m->version, m->version + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
}

static void end_write(ph_meta *m)
{
    atomic_store_explicit(&m->version, m->version + 1, memory_order_release);
}

ph_pos pethash_insert(pethash *ph, pm_region *pm, uint64_t key, uint64_t h, uint64_t ref)
{
    const uint64_t step = ph_step(h);
    const uint64_t home = ph_home(ph, h);
    uint64_t b = home;
    for (uint64_t probes = 0; probes <= ph->mask; probes++, b = (b + step) & ph->mask) {
        ph_meta *m = &ph->meta[b];
        if (m->count < PH_SLOTS)
            break;
    }
    ph_meta *m = &ph->meta[b];
    if (m->count >= PH_SLOTS)
        return (ph_pos){0, NULL};
    /* Readers probing past the full buckets must know to go on before the key appears. */
    for (uint64_t p = home; p != b; p = (p + step) & ph->mask)
        if (ph->meta[p].overflow < 255)
            ph->meta[p].overflow++;
    unsigned i = 0;
    while (m->tags[i])
        i++;
    ph_slot *s = &ph->buckets[b].slot[i];
    begin_write(m);
    /* Key before ref: a slot is live once its ref is non-zero, in DRAM and after a crash alike. */
    s->key = key;
    atomic_store_explicit(&s->ref, ref, memory_order_release);
    m->tags[i] = ph_tag(h);
    m->count++;
    end_write(m);
    pm_flush(pm, s, sizeof(*s));
    return (ph_pos){b, s};
}

void pethash_remove(pethash *ph, pm_region *pm, ph_pos pos, uint64_t h)
{
    ph_meta *m = &ph->meta[pos.bucket];
    unsigned i = (unsigned)(pos.slot - ph->buckets[pos.bucket].slot);
    begin_write(m);
    m->tags[i] = 0;
    atomic_store_explicit(&pos.slot->ref, 0, memory_order_release);
    m->count--;
    end_write(m);
    pm_flush(pm, &pos.slot->ref, sizeof(pos.slot->ref));
    const uint64_t step = ph_step(h);
    for (uint64_t p = ph_home(ph, h); p != pos.bucket; p = (p + step) & ph->mask)
        if (ph->meta[p].overflow < 255)
            ph->meta[p].overflow--;
}

int pethash_restore_probe(pethash *ph, uint64_t bucket, uint64_t key, uint64_t h)
{
    const uint8_t tag = ph_tag(h);
    const uint64_t step = ph_step(h);
    for (uint64_t p = ph_home(ph, h); p != bucket; p = (p + step) & ph->mask) {
        ph_meta *m = &ph->meta[p];
        for (unsigned bits = ph_tag_matches(m, tag); bits; bits &= bits - 1)
            if (ph->buckets[p].slot[__builtin_ctz(bits)].key == key)
                return 0;
        if (m->overflow < 255)
            m->overflow++;
    }
    return 1;
}
