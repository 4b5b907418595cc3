/* table.c -- one table: its file, recovery, lock-free reads and copy-on-write writes. */
#include "table.h"

#include "optimizer.h"
#include "pethash.h"
#include "recovery.h"
#include "slab_pool.h"
#include "status.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define TABLE_MAGIC 0x3142415453504245ull  /* "EBPSTAB1" */
#define LAYOUT_VERSION 3u   /* 3: a version clock per slab, after the pool */
#define HEADER_BYTES 4096u
#define PAGE 4096u
#define MAX_LOAD 0.85
#define CHUNK_ROWS 1024   /* rows computed per round of a write (see write_all) */

/* ---- the file: layout, creation, recovery -------------------------------- */

/* Written once at creation, never modified: everything needed to read the file. */
typedef struct {
    uint64_t magic;
    uint32_t layout_version, header_bytes;
    char name[EMBPS_NAME_MAX + 1];
    embps_table_spec spec;
    uint64_t n_buckets, n_slabs;
    uint32_t slab_bytes, state_floats;
    uint64_t index_offset, pool_offset, file_bytes;
    uint64_t checksum;          /* of every byte above */
} table_header;

/* Per-write scratch, owned by the writer holding write_lock. */
typedef struct {
    uint64_t *map_keys;         /* key -> unique index, open addressing */
    uint32_t *map_idx;
    size_t map_cap;
    uint64_t *ukeys, *uhash;
    size_t *uindex;             /* last input position of each unique key */
    uint64_t *ucount;           /* its gradient contributions (update) */
    ph_pos *upos;
    uint64_t *old_ref, *new_ref;
    float *ugrads;
    float *init_slab;           /* initial row + zero state of a missing key */
    float *trial_slab;          /* a new row and state computed only to be checked */
    size_t cap;
} write_scratch;

struct embps_table {
    char name[EMBPS_NAME_MAX + 1];
    embps_table_spec spec;
    uint32_t dim, state_floats;
    table_header *header;
    pm_region *pm;
    pethash index;
    slab_pool pool;
    uint64_t *versions;         /* per slab, in the file after the pool */
    pthread_mutex_t write_lock;
    _Atomic uint64_t rows;
    int volatile_;              /* a cache: updates of present rows happen in place */
    double recovery_seconds;
    write_scratch ws;
};

static uint64_t header_checksum(const table_header *h)
{
    const unsigned char *p = (const unsigned char *)h;
    uint64_t sum = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < offsetof(table_header, checksum); i++)
        sum = (sum ^ p[i]) * 0x100000001B3ull;
    return sum;
}

static uint64_t next_pow2(uint64_t x)
{
    uint64_t p = 1;
    while (p < x)
        p <<= 1;
    return p;
}

static uint64_t round_up(uint64_t x, uint64_t to) { return (x + to - 1) / to * to; }

/* Slab i's version clock is word i of an array after the pool: written and flushed with the slab, before
 * the slab is published, so a row and its version persist in one failure-atomic step; kept apart from
 * the slabs so that adjacent rows stay adjacent for the zero-copy gathers. */
static uint64_t versions_offset(const table_header *h)
{
    return round_up(h->pool_offset + h->n_slabs * h->slab_bytes, 64);
}

static uint64_t *slab_version(const embps_table *t, uint64_t ref)
{
    return &t->versions[ref - 1];
}

static void plan_layout(const char *name, const embps_table_spec *spec, table_header *h)
{
    memset(h, 0, sizeof(*h));
    h->magic = TABLE_MAGIC;
    h->layout_version = LAYOUT_VERSION;
    h->header_bytes = HEADER_BYTES;
    strncpy(h->name, name, EMBPS_NAME_MAX);
    h->spec = *spec;
    h->state_floats = embps_optimizer_state_floats(spec->optimizer, spec->dim);
    h->slab_bytes = (uint32_t)round_up(((uint64_t)spec->dim + h->state_floats) * sizeof(float), 16);
    h->n_buckets = next_pow2((uint64_t)(spec->capacity / (PH_SLOTS * MAX_LOAD)) + 1);
    /* Headroom for copy-on-write: new slabs exist before the old ones are reclaimed. */
    uint64_t headroom = spec->capacity / 16 > 4 * CHUNK_ROWS ? spec->capacity / 16 : 4 * CHUNK_ROWS;
    h->n_slabs = spec->capacity + headroom;
    h->index_offset = HEADER_BYTES;
    h->pool_offset = round_up(h->index_offset + h->n_buckets * sizeof(ph_bucket), PAGE);
    h->file_bytes = round_up(versions_offset(h) + h->n_slabs * sizeof(uint64_t), PAGE);
    h->checksum = header_checksum(h);
}

/* The file's blocks are reserved now, so a full disk fails the create instead of a later store
 * through the mapping (which would kill the process with SIGBUS).  Reserved blocks read as zeros: an
 * empty index and an unused pool, no writes needed. */
static int reserve_blocks(int fd, const char *path, const table_header *h)
{
    const unsigned long long bytes = h->file_bytes;
    struct statvfs fs;
    /* Checked first so that a table far too large fails at once, without filling the disk for a
     * moment; f_blocks is 0 where the file system does not say (an unlimited tmpfs). */
    int err = fstatvfs(fd, &fs) == 0 && fs.f_blocks && bytes / fs.f_frsize >= fs.f_bavail ? ENOSPC
              : posix_fallocate(fd, 0, (off_t)bytes);
    if (err == ENOSPC || err == EDQUOT)
        return fail(EMBPS_E_CAPACITY, "not enough storage for table %s: its file needs %llu bytes", h->name, bytes);
    if (err == EFBIG)
        return fail(EMBPS_E_INVALID_ARGUMENT, "table %s needs a file of %llu bytes, more than the store's file "
                    "system allows", h->name, bytes);
    if (err)
        return fail(EMBPS_E_IO, "cannot reserve %llu bytes for %s: %s", bytes, file_label(path), strerror(err));
    return EMBPS_OK;
}

int table_create_file(const char *path, const char *name, const embps_table_spec *spec)
{
    table_header h;
    plan_layout(name, spec, &h);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return fail(EMBPS_E_IO, "cannot create %s: %s", file_label(path), strerror(errno));
    int rc = reserve_blocks(fd, path, &h);
    if (!rc && (pwrite(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) || fsync(fd)))
        rc = fail(EMBPS_E_IO, "cannot write %s: %s", file_label(path), strerror(errno));
    close(fd);
    return rc;
}

static int header_is_valid(const table_header *h, size_t file_bytes, const char *path)
{
    path = file_label(path);
    if (file_bytes < HEADER_BYTES || h->magic != TABLE_MAGIC)
        return fail(EMBPS_E_CORRUPT, "%s is not an embps table", path);
    if (h->layout_version != LAYOUT_VERSION)
        return fail(EMBPS_E_CORRUPT, "%s has layout version %u, this build reads %u", path, h->layout_version,
                    LAYOUT_VERSION);
    if (h->checksum != header_checksum(h))
        return fail(EMBPS_E_CORRUPT, "%s: header checksum mismatch", path);
    if (spec_is_valid(&h->spec) != EMBPS_OK) {   /* the layout below is planned from it */
        char why[256];
        snprintf(why, sizeof(why), "%s", embps_errormsg());
        return fail(EMBPS_E_CORRUPT, "%s: invalid spec: %s", path, why);
    }
    table_header expect;
    plan_layout(h->name, &h->spec, &expect);
    if (memcmp(&expect, h, sizeof(expect)) != 0 || h->file_bytes != file_bytes)
        return fail(EMBPS_E_CORRUPT, "%s: layout does not match its header (truncated file?)", path);
    /* The store finds a table by the name in its header and drops it by its file's name: the file is
     * <name>.<suffix>, whatever the suffix (the store's own). */
    const char *file = strrchr(path, '/') ? strrchr(path, '/') + 1 : path, *suffix = strrchr(file, '.');
    const size_t n = strlen(h->name);   /* terminated: the name matched plan_layout's copy */
    if (!suffix || (size_t)(suffix - file) != n || strncmp(file, h->name, n) != 0)
        return fail(EMBPS_E_CORRUPT, "%s holds table '%s', not the one it is named after", file, h->name);
    return EMBPS_OK;
}

/* Rebuilds tags, counts, overflow counters and the allocator from the slots in PM. */
static int recover(embps_table *t)
{
    uint64_t rows;
    int rc = recovery_rebuild(&t->index, &t->pool, t->name, &rows);
    if (!rc)
        atomic_store(&t->rows, rows);
    return rc;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int table_open(const char *path, pm_sim *sim, int volatile_, embps_table **out)
{
    double start = now_seconds();
    embps_table *t = calloc(1, sizeof(*t));
    if (!t)
        return fail(EMBPS_E_NOMEM, "out of memory opening %s", file_label(path));
    t->volatile_ = volatile_;
    pthread_mutex_init(&t->write_lock, NULL);
    int rc = pm_region_map(path, sim, volatile_, &t->pm);
    if (rc) {
        free(t);
        return rc;
    }
    char *base = pm_region_base(t->pm);
    t->header = (table_header *)base;
    rc = header_is_valid(t->header, pm_region_size(t->pm), path);
    if (!rc) {
        const table_header *h = t->header;
        memcpy(t->name, h->name, sizeof(t->name));
        t->spec = h->spec;
        t->dim = h->spec.dim;
        t->state_floats = h->state_floats;
        rc = pethash_init(&t->index, base + h->index_offset, h->n_buckets);
    }
    if (!rc) {
        rc = slab_pool_init(&t->pool, base + t->header->pool_offset, t->header->n_slabs, t->header->slab_bytes);
        t->versions = (uint64_t *)(base + versions_offset(t->header));
    }
    if (!rc)
        rc = recover(t);
    if (rc) {
        table_close(t);
        return rc;
    }
    t->recovery_seconds = now_seconds() - start;
    *out = t;
    return EMBPS_OK;
}

void table_close(embps_table *t)
{
    if (!t)
        return;
    write_scratch *ws = &t->ws;
    free(ws->map_keys);
    free(ws->map_idx);
    free(ws->ukeys);
    free(ws->uhash);
    free(ws->uindex);
    free(ws->ucount);
    free(ws->upos);
    free(ws->old_ref);
    free(ws->new_ref);
    free(ws->ugrads);
    free(ws->init_slab);
    free(ws->trial_slab);
    pethash_free(&t->index);
    slab_pool_free(&t->pool);
    pm_region_unmap(t->pm);
    pthread_mutex_destroy(&t->write_lock);
    free(t);
}

/* ---- what a table is ----------------------------------------------------- */

const char *table_name(const embps_table *t)
{
    return t->name;
}

int table_name_check(const char *name, size_t len)
{
    int valid = len > 0 && len <= EMBPS_NAME_MAX && name[0] != '.';
    for (size_t i = 0; valid && i < len; i++) {
        char c = name[i];
        valid = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                c == '-' || c == '.';
    }
    return valid ? EMBPS_OK
                 : fail(EMBPS_E_INVALID_ARGUMENT, "table name must be 1-%d characters of [A-Za-z0-9_.-], not "
                        "starting with '.'", EMBPS_NAME_MAX);
}

void embps_table_describe(embps_table *t, embps_table_spec *spec, embps_table_stats *stats)
{
    if (spec)
        *spec = t->spec;
    if (!stats)
        return;
    pthread_mutex_lock(&t->write_lock);
    *stats = (embps_table_stats){
        .rows = atomic_load(&t->rows),
        .buckets = t->index.mask + 1,
        .slabs_total = t->pool.n_slabs,
        .slabs_used = t->pool.n_used,
        .slabs_retired = t->pool.n_retired,
        .state_floats = t->state_floats,
        .slab_bytes = t->pool.slab_bytes,
        .file_bytes = t->header->file_bytes,
        .recovery_seconds = t->recovery_seconds,
    };
    pthread_mutex_unlock(&t->write_lock);
}

void table_missing_row(const embps_table *t, uint64_t key, float *row)
{
    if (t->spec.missing == EMBPS_MISSING_REPORT)
        memset(row, 0, t->dim * sizeof(float));
    else
        init_row(&t->spec, key, row);
}

void embps_table_pool_region(embps_table *t, void **base, size_t *len)
{
    *base = t->pool.base;
    *len = t->pool.n_slabs * t->pool.slab_bytes;
}

/* ---- reads (lock-free) --------------------------------------------------- */

static int check_len(const char *what, size_t got, size_t n, size_t width)
{
    if (got != n * width)
        return fail(EMBPS_E_INVALID_ARGUMENT, "%s buffer holds %zu floats; %zu keys x %zu need %zu", what, got,
                    n, width, n * width);
    return EMBPS_OK;
}

/* The output buffers of a lookup of n keys: n rows, and n states when state_out is given. */
static int check_lookup_lens(const embps_table *t, size_t n, size_t rows_len, const float *state_out,
                             size_t state_len)
{
    int rc = check_len("rows", rows_len, n, t->dim);
    if (!rc && state_out)
        rc = check_len("state", state_len, n, t->state_floats);
    return rc;
}

enum { PF_DIST = 16 };  /* keys between a write's prefetch of a key's memory and its use */

static void prefetch_slab(const char *slab, size_t bytes)
{
    /* Slabs are 16-byte aligned, so a row may start mid-line and end one line later: its last byte is
     * fetched too.  A fixed count of prefetches per row, where a loop to the row's last line would
     * take 2 or 3 turns at random and mispredict its branch for every other key. */
    for (size_t offset = 0; offset < bytes; offset += 64)
        __builtin_prefetch(slab + offset);
    __builtin_prefetch(slab + bytes - 1);
}

/* A slab about to be written whole: its lines fetched for writing while other rows are computed. */
static void prefetch_new_slab(const slab_pool *p, uint64_t ref)
{
    uintptr_t first = (uintptr_t)slab_at(p, ref) & ~(uintptr_t)63;
    uintptr_t end = (uintptr_t)slab_at(p, ref) + p->slab_bytes;
    for (uintptr_t line = first; line < end; line += 64)
        __builtin_prefetch((const void *)line, 1);
}

/* The batched reads' pipeline: a software-pipelined loop, each turn moving every key in flight one stage
 * on.  A key's tags are prefetched; SLOT_AT keys later the slot they point at; REF_AT keys later its ref
 * is read and its slab prefetched; READ_AT keys later the caller reads the slab.  Stages in rounds (a
 * tight loop per stage over 4 to 16 keys) measured about twice as slow on cold rows here: bursts of
 * prefetches, each to another page, seem to outrun the core's misses in flight.
 *
 * Each distance must outlast a miss to memory at the pace a turn takes (a turn of a cached key is a
 * few ns): the index's slot, a dependent read of the tags, is what a short one leaves stalled.  With
 * 8/16/32 here, a 500K-row table's lookups ran as fast as without any row copy at all, and 4x slower
 * than without reading the slots; 24/56/80 ran 1.35x faster (2 MB pages; 1.1-1.2x on 4 KB), and 32/64/88
 * or 24/56/72 no faster. */
enum {
    SLOT_AT = 24, REF_AT = 56, READ_AT = 80,
    RING = 128,                                /* what the stages keep per key in flight: a power of 2 above READ_AT */
};

typedef struct {
    /* Copies of what the stages read per key: in the caller's frame the compiler keeps them in registers,
     * where through the table it would reload them after every store (the build does not assume strict
     * aliasing).  They never change while the table is open. */
    pethash index;
    const char *slab0;          /* the pool less one slab: slab ref at slab0 + ref * slab_bytes */
    size_t slab_bytes;
    const uint64_t *versions;   /* the slabs' versions, prefetched with them; NULL: not read */
    const uint64_t *keys;
    size_t n;
    size_t fetch_bytes;         /* of each slab, prefetched once its ref is known */
    size_t row_bytes, state_bytes;
    size_t next;                /* the turn about to run: key `next` enters the pipeline */
    uint64_t hash[RING], ref[RING];
    uint8_t guess[RING];        /* the slot of the key's home bucket its tags point at (ph_prefetch_slot) */
    const char *slab[RING];     /* the slab of ref[k % RING], NULL for ref 0: found once, read twice */
} read_pipe;

/* Sets up p's fields; its per-key arrays are left as they are, each written by a stage before it is read
 * (a compound literal would clear their 2 KB on every call). */
static inline void read_pipe_start(read_pipe *p, const embps_table *t, const uint64_t *keys, size_t n,
                                   size_t fetch_bytes, int versions)
{
    p->index = t->index;
    p->slab0 = t->pool.base - t->pool.slab_bytes;
    p->slab_bytes = t->pool.slab_bytes;
    p->versions = versions ? t->versions : NULL;
    p->keys = keys;
    p->n = n;
    p->fetch_bytes = fetch_bytes;
    p->row_bytes = t->dim * sizeof(float);
    p->state_bytes = t->state_floats * sizeof(float);
    p->next = 0;
}

/* Slab ref (> 0) of the pipe's table. */
static inline const char *pipe_slab(const read_pipe *p, uint64_t ref)
{
    return p->slab0 + ref * p->slab_bytes;
}

static inline __attribute__((always_inline)) void pipe_tags(read_pipe *p, size_t k)
{
    p->hash[k % RING] = mix64(p->keys[k]);
    ph_prefetch_meta(&p->index, p->hash[k % RING]);
}

static inline __attribute__((always_inline)) void pipe_slot(read_pipe *p, size_t k)
{
    p->guess[k % RING] = (uint8_t)ph_prefetch_slot(&p->index, p->hash[k % RING]);
}

/* prefetch_slab's lines with branches that go the same way for every key of a batch (a loop's would
 * not: fetch_bytes is not known when compiling).  Most rows span at most three lines. */
static inline void pipe_prefetch_slab(const read_pipe *p, const char *slab)
{
    const size_t bytes = p->fetch_bytes;
    __builtin_prefetch(slab);
    if (bytes > 64)
        __builtin_prefetch(slab + 64);
    for (size_t offset = 128; offset < bytes; offset += 64)
        __builtin_prefetch(slab + offset);
    __builtin_prefetch(slab + bytes - 1);
}

static inline __attribute__((always_inline)) void pipe_ref(read_pipe *p, size_t k)
{
    const uint64_t r = pethash_get_guessed(&p->index, p->keys[k], p->hash[k % RING], p->guess[k % RING]);
    p->ref[k % RING] = r;
    p->slab[k % RING] = NULL;
    if (r) {
        p->slab[k % RING] = pipe_slab(p, r);
        pipe_prefetch_slab(p, p->slab[k % RING]);
    }
    if (r && p->versions)
        __builtin_prefetch(&p->versions[r - 1]);
}

/* Turn i of the pipeline with every stage busy (READ_AT <= i < n): most turns of a large batch. */
static inline __attribute__((always_inline)) void read_pipe_full_turn(read_pipe *p, size_t i)
{
    pipe_tags(p, i);
    pipe_slot(p, i - SLOT_AT);
    pipe_ref(p, i - REF_AT);
}

/* Turn i of the pipeline at a batch's ends: each stage only for a key of the batch. */
static inline __attribute__((always_inline)) void read_pipe_turn(read_pipe *p, size_t i)
{
    const size_t n = p->n;
    if (i < n)
        pipe_tags(p, i);
    if (i >= SLOT_AT && i - SLOT_AT < n)
        pipe_slot(p, i - SLOT_AT);
    if (i >= REF_AT && i - REF_AT < n)
        pipe_ref(p, i - REF_AT);
}

/* Runs turns of the pipeline until a key's ref is ready: that key (they come in order), its ref in
 * ref[k % RING] (0: not in the table) and its slab prefetched; n when every key has been read.  The
 * caller holds an epoch.  Inline, as is everything it calls: it runs once per key. */
static inline __attribute__((always_inline)) size_t read_pipe_next(read_pipe *p)
{
    const size_t n = p->n;
    for (;;) {
        const size_t i = p->next++;
        if (i >= READ_AT && i < n) {
            read_pipe_full_turn(p, i);
            return i - READ_AT;
        }
        read_pipe_turn(p, i);
        if (i >= READ_AT)
            return i - READ_AT < n ? i - READ_AT : n;
    }
}

/* What a key not in the table reads as: a lookup's missing row, and zero state. */
static void read_missing(const embps_table *t, uint64_t key, float *row_out, float *state_out)
{
    table_missing_row(t, key, row_out);
    if (state_out)
        memset(state_out, 0, t->state_floats * sizeof(float));
}

/* The row (and state) of the pipe's key k into row_out (and state_out). */
static inline void pipe_read_row(const embps_table *t, const read_pipe *p, size_t k, float *row_out,
                                 float *state_out)
{
    const char *slab = p->slab[k % RING];
    if (__builtin_expect(!slab, 0)) {
        read_missing(t, p->keys[k], row_out, state_out);
        return;
    }
    memcpy(row_out, slab, p->row_bytes);
    if (state_out)
        memcpy(state_out, slab + p->row_bytes, p->state_bytes);
}

/* The slab of the pipe's key k, NULL if the key is not in the table. */
static inline const char *pipe_row(const read_pipe *p, size_t k)
{
    return p->slab[k % RING];
}

/* A lookup's key k, its slab known: its row (and state), and whether it was found. */
static inline __attribute__((always_inline)) void lookup_key(const embps_table *t, const read_pipe *p, size_t k,
                                                             float *row_out, float *state_out, uint8_t *found_out)
{
    pipe_read_row(t, p, k, row_out, state_out ? state_out + k * t->state_floats : NULL);
    if (found_out)
        found_out[k] = p->slab[k % RING] != NULL;
}

/* A lookup's loop over its keys for rows of row_bytes bytes: embps_table_lookup calls it with constants
 * for rows of 8, 16, 32 and 64 floats, so that each row's copy is a few moves inline, not a call to memcpy
 * with its size dispatch (a fifth of a cached key's instructions), and the slab's prefetches fold to a
 * fixed few.  (Rows of 128 floats are left to memcpy: gcc inlines their copy as rep movsq.) */
static inline __attribute__((always_inline)) void lookup_rows(const embps_table *t, const uint64_t *keys, size_t n,
                                                              size_t row_bytes, float *rows_out, float *state_out,
                                                              uint8_t *found_out)
{
    const size_t dim = row_bytes / sizeof(float), sf = t->state_floats;
    read_pipe p;
    read_pipe_start(&p, t, keys, n, row_bytes + (state_out ? sf * sizeof(float) : 0), 0);
    p.row_bytes = row_bytes;
    /* read_pipe_next's turns as three loops, the middle one free of its tests: with them and the return
     * between turns, a key took ~10 instructions more (of ~135). */
    size_t i = 0;
    for (; i < READ_AT; i++)
        read_pipe_turn(&p, i);
    for (; i < n; i++) {
        read_pipe_full_turn(&p, i);
        lookup_key(t, &p, i - READ_AT, rows_out + (i - READ_AT) * dim, state_out, found_out);
    }
    for (; i < n + READ_AT; i++) {
        read_pipe_turn(&p, i);
        lookup_key(t, &p, i - READ_AT, rows_out + (i - READ_AT) * dim, state_out, found_out);
    }
}

int embps_table_lookup(embps_table *t, const uint64_t *keys, size_t n, float *rows_out, size_t rows_len,
                       float *state_out, size_t state_len, uint8_t *found_out)
{
    int rc = check_lookup_lens(t, n, rows_len, state_out, state_len);
    if (rc)
        return rc;
    const size_t row_bytes = t->dim * sizeof(float);
    uint64_t epoch = epoch_enter(&t->pool);
    switch (state_out || found_out ? 0 : row_bytes) {
    case 32:  lookup_rows(t, keys, n, 32, rows_out, NULL, NULL); break;
    case 64:  lookup_rows(t, keys, n, 64, rows_out, NULL, NULL); break;
    case 128: lookup_rows(t, keys, n, 128, rows_out, NULL, NULL); break;
    case 256: lookup_rows(t, keys, n, 256, rows_out, NULL, NULL); break;
    default:  lookup_rows(t, keys, n, row_bytes, rows_out, state_out, found_out); break;
    }
    epoch_exit(&t->pool, epoch);
    return EMBPS_OK;
}

int embps_table_gather_begin(embps_table *t, const uint64_t *keys, size_t n, int with_state, embps_sge *sge_out,
                             uint64_t *guard_out)
{
    const uint32_t len = (uint32_t)((t->dim + (with_state ? t->state_floats : 0)) * sizeof(float));
    uint64_t epoch = epoch_enter(&t->pool);
    /* The slab prefetches serve the send that follows. */
    read_pipe p;
    read_pipe_start(&p, t, keys, n, len, 0);
    for (size_t k; (k = read_pipe_next(&p)) < n;) {
        const char *slab = pipe_row(&p, k);
        sge_out[k] = slab ? (embps_sge){(uint64_t)(uintptr_t)slab, len, 1} : (embps_sge){0, 0, 0};
        }
    *guard_out = epoch;
    return EMBPS_OK;
}

void embps_table_gather_end(embps_table *t, uint64_t guard)
{
    epoch_exit(&t->pool, guard);
}

/* A row's version: 0 for a key never written (ref 0). */
static uint64_t ref_version(const embps_table *t, uint64_t ref)
{
    return ref ? *slab_version(t, ref) : 0;
}

int embps_table_lookup_versioned(embps_table *t, const uint64_t *keys, size_t n, float *rows_out, size_t rows_len,
                                 float *state_out, size_t state_len, uint64_t *versions_out)
{
    const size_t dim = t->dim, sf = t->state_floats;
    int rc = check_lookup_lens(t, n, rows_len, state_out, state_len);
    if (rc)
        return rc;
    uint64_t epoch = epoch_enter(&t->pool);
    read_pipe p;
    read_pipe_start(&p, t, keys, n, (dim + (state_out ? sf : 0)) * sizeof(float), 1);
    for (size_t k; (k = read_pipe_next(&p)) < n;) {
        pipe_read_row(t, &p, k, rows_out + k * dim, state_out ? state_out + k * sf : NULL);
        versions_out[k] = ref_version(t, p.ref[k % RING]);
    }
    epoch_exit(&t->pool, epoch);
    return EMBPS_OK;
}

int embps_table_lookup_stale(embps_table *t, const uint64_t *keys, const uint64_t *versions, size_t n,
                             uint64_t bound, int with_state, uint32_t *index_out, uint64_t *versions_out,
                             float *rows_out, size_t rows_len, size_t *m_out)
{
    const size_t dim = t->dim, width = dim + (with_state ? t->state_floats : 0);
    int rc = check_len("rows", rows_len, n, width);
    if (rc)
        return rc;
    if (n > UINT32_MAX)
        return fail(EMBPS_E_INVALID_ARGUMENT, "a refresh takes at most %u keys, not %zu", UINT32_MAX, n);
    size_t m = 0;
    uint64_t epoch = epoch_enter(&t->pool);
    read_pipe p;
    read_pipe_start(&p, t, keys, n, width * sizeof(float), 1);
    for (size_t i; (i = read_pipe_next(&p)) < n;) {
        uint64_t r = p.ref[i % RING], v = ref_version(t, r);
        /* Written without overflow: v - versions[i] > bound. */
        if (versions[i] == EMBPS_NO_VERSION || (v > versions[i] && v - versions[i] > bound)) {
            float *row = rows_out + m * width;
            pipe_read_row(t, &p, i, row, with_state ? row + dim : NULL);
            index_out[m] = (uint32_t)i;
            versions_out[m++] = v;
        }
    }
    epoch_exit(&t->pool, epoch);
    *m_out = m;
    return EMBPS_OK;
}

int embps_table_export(embps_table *t, uint64_t *cursor, size_t max, uint64_t *keys_out, float *rows_out,
                       float *state_out, size_t *n_out)
{
    if (max < PH_SLOTS)
        return fail(EMBPS_E_INVALID_ARGUMENT, "export needs room for at least %d rows per call", PH_SLOTS);
    const size_t dim = t->dim, sf = t->state_floats, row_bytes = dim * sizeof(float);
    const uint64_t n_buckets = t->index.mask + 1;
    size_t n = 0;
    uint64_t b = *cursor;
    uint64_t epoch = epoch_enter(&t->pool);
    for (; b < n_buckets && n + PH_SLOTS <= max; b++) {
        const ph_meta *m = &t->index.meta[b];
        uint64_t keys[PH_SLOTS], refs[PH_SLOTS];
        unsigned live;
        uint32_t v;
        do {  /* a consistent copy of the bucket's entries, as in pethash_get */
            while ((v = atomic_load_explicit(&m->version, memory_order_acquire)) & 1)
                ;
            live = 0;
            for (unsigned i = 0; i < PH_SLOTS; i++) {
                if (!m->tags[i])
                    continue;
                keys[live] = t->index.buckets[b].slot[i].key;
                refs[live] = atomic_load_explicit(&t->index.buckets[b].slot[i].ref, memory_order_acquire);
                live += refs[live] != 0;
            }
            atomic_thread_fence(memory_order_acquire);
        } while (atomic_load_explicit(&m->version, memory_order_relaxed) != v);
        for (unsigned i = 0; i < live; i++, n++) {
            const char *slab = slab_at(&t->pool, refs[i]);
            keys_out[n] = keys[i];
            memcpy(rows_out + n * dim, slab, row_bytes);
            if (state_out)
                memcpy(state_out + n * sf, slab + row_bytes, sf * sizeof(float));
        }
    }
    epoch_exit(&t->pool, epoch);
    *cursor = b < n_buckets ? b : UINT64_MAX;
    *n_out = n;
    return EMBPS_OK;
}

/* ---- writes (one writer per table) --------------------------------------- */

static int grow_scratch(embps_table *t, size_t n)
{
    write_scratch *ws = &t->ws;
    size_t map_cap = 16;
    while (map_cap < 2 * n)
        map_cap <<= 1;
    if (map_cap > ws->map_cap) {
        free(ws->map_keys);
        free(ws->map_idx);
        ws->map_keys = malloc(map_cap * sizeof(uint64_t));
        ws->map_idx = malloc(map_cap * sizeof(uint32_t));
        ws->map_cap = ws->map_keys && ws->map_idx ? map_cap : 0;
        if (!ws->map_cap)
            return fail(EMBPS_E_NOMEM, "out of memory for a batch of %zu keys", n);
    }
    if (n <= ws->cap && ws->init_slab)
        return EMBPS_OK;
#define GROW(field, count) (free(ws->field), (ws->field = malloc(((count) + 1) * sizeof(*ws->field))) != NULL)
    int ok = GROW(ukeys, n) & GROW(uhash, n) & GROW(uindex, n) & GROW(ucount, n) & GROW(upos, n) & GROW(old_ref, n) &
             GROW(new_ref, n) & GROW(ugrads, n * t->dim) & GROW(init_slab, t->dim + t->state_floats) &
             GROW(trial_slab, t->dim + t->state_floats);
#undef GROW
    ws->cap = ok ? n : 0;
    return ok ? EMBPS_OK : fail(EMBPS_E_NOMEM, "out of memory for a batch of %zu keys", n);
}

/* sum[j] += v[j]: the two never overlap (scratch and the caller's gradients), which lets it vectorize. */
static void add_floats(float *restrict sum, const float *restrict v, size_t n)
{
    for (size_t j = 0; j < n; j++)
        sum[j] += v[j];
}

/* Collapses repeated keys into ukeys and uhash, in the order they first appear; uindex remembers
 * each one's last input position (the row an assign writes) and, given grads, ugrads holds its
 * summed gradients.  Returns the unique count. */
static size_t dedupe(embps_table *t, const uint64_t *keys, size_t n, const float *grads, const uint32_t *counts)
{
    write_scratch *ws = &t->ws;
    const size_t dim = t->dim, mask = ws->map_cap - 1;
    memset(ws->map_idx, 0xFF, ws->map_cap * sizeof(uint32_t));
    size_t nu = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t h = mix64(keys[i]);
        size_t pos = h & mask;
        while (ws->map_idx[pos] != UINT32_MAX && ws->map_keys[pos] != keys[i])
            pos = (pos + 1) & mask;
        size_t u = ws->map_idx[pos];
        if (u == UINT32_MAX) {
            u = nu++;
            ws->map_idx[pos] = (uint32_t)u;
            ws->map_keys[pos] = keys[i];
            ws->ukeys[u] = keys[i];
            ws->uhash[u] = h;
            ws->ucount[u] = 0;
            if (grads)
                memset(ws->ugrads + u * dim, 0, dim * sizeof(float));
        }
        ws->uindex[u] = i;
        ws->ucount[u] += counts ? counts[i] : 1;
        if (grads)
            add_floats(ws->ugrads + u * dim, grads + i * dim, dim);
    }
    return nu;
}

typedef struct {
    const float *rows, *state;  /* assign: source rows and optional state */
} assign_src;

/* Writes the new slab of unique key u from its current row and state. */
static void fill_slab(embps_table *t, size_t u, const float *old, const assign_src *src, float *slab)
{
    const size_t dim = t->dim, sf = t->state_floats;
    if (!src) {
        optimizer_step(&t->spec, old, old + dim, t->ws.ugrads + u * dim, slab, slab + dim);
        return;
    }
    size_t i = t->ws.uindex[u];
    memcpy(slab, src->rows + i * dim, dim * sizeof(float));
    if (src->state)
        memcpy(slab + dim, src->state + i * sf, sf * sizeof(float));
    else
        memset(slab + dim, 0, sf * sizeof(float));
}

static int nonfinite(const embps_table *t, uint64_t key)
{
    return fail(EMBPS_E_NONFINITE, "the update would store NaN or Inf in row %llu of table %s (a sum, square or "
                "step overflowed); nothing was applied", (unsigned long long)key, t->name);
}

static void free_new_slabs(embps_table *t, size_t lo, size_t hi)
{
    for (size_t u = lo; u < hi; u++)
        if (t->ws.new_ref[u])
            slab_unalloc(&t->pool, t->ws.new_ref[u]);
}

/* Copy-on-write, first half: new slabs for rows [lo, hi), filled from the current ones and flushed;
 * an update's are checked as they are computed (finite inputs can overflow).  A volatile table (a
 * cache, whose owner never reads a row it is updating) updates present rows in place instead: new_ref
 * 0 marks them.  On failure the round's new slabs are freed. */
static int fill_round(embps_table *t, size_t lo, size_t hi, const assign_src *src)
{
    write_scratch *ws = &t->ws;
    slab_pool *pool = &t->pool;
    const int in_place = t->volatile_ && !src;
    for (size_t u = lo; u < hi; u++) {   /* every slab touched below, prefetched first */
        ph_slot *slot = ws->upos[u].slot;
        ws->old_ref[u] = slot ? atomic_load(&slot->ref) : 0;
        if (ws->old_ref[u]) {   /* its version is read below, from an array apart from the slabs */
            __builtin_prefetch(slab_version(t, ws->old_ref[u]));
            if (!src)
                prefetch_slab(slab_at(pool, ws->old_ref[u]), pool->slab_bytes);
        }
        ws->new_ref[u] = 0;
        if (in_place && ws->old_ref[u])
            continue;
        int rc = slab_alloc(pool, &ws->new_ref[u]);
        if (rc) {
            free_new_slabs(t, lo, u);
            return rc;
        }
        prefetch_new_slab(pool, ws->new_ref[u]);
        __builtin_prefetch(slab_version(t, ws->new_ref[u]), 1);
    }
    for (size_t u = lo; u < hi; u++) {
        if (!ws->new_ref[u]) {
            float *slab = (float *)slab_at(pool, ws->old_ref[u]);
            optimizer_step(&t->spec, slab, slab + t->dim, ws->ugrads + u * t->dim, slab, slab + t->dim);
            *slab_version(t, ws->old_ref[u]) += ws->ucount[u];
            continue;
        }
        const float *old = ws->init_slab;
        if (ws->old_ref[u])
            old = (const float *)slab_at(pool, ws->old_ref[u]);
        else if (!src)
            init_row(&t->spec, ws->ukeys[u], ws->init_slab);
        float *slab = (float *)slab_at(pool, ws->new_ref[u]);
        fill_slab(t, u, old, src, slab);
        if (!src && !all_finite(slab, t->dim + t->state_floats)) {
            free_new_slabs(t, lo, hi);
            return nonfinite(t, ws->ukeys[u]);
        }
        uint64_t *version = slab_version(t, ws->new_ref[u]);   /* an assign is one write; 0 before the first */
        *version = (ws->old_ref[u] ? *slab_version(t, ws->old_ref[u]) : 0) + (src ? 1 : ws->ucount[u]);
        pm_flush(t->pm, slab, pool->slab_bytes);
        pm_flush(t->pm, version, sizeof(*version));
    }
    return EMBPS_OK;
}

/* Copy-on-write, second half: once the new slabs of rows [lo, hi) are persistent they are published,
 * then the old ones retired. */
static int publish(embps_table *t, size_t lo, size_t hi)
{
    write_scratch *ws = &t->ws;
    int rc = pm_drain(t->pm);
    if (rc)
        return rc;
    uint64_t added = 0;
    for (size_t u = lo; u < hi; u++) {
        if (u + PF_DIST < hi && ws->upos[u + PF_DIST].slot)   /* read long ago when the batch is large */
            __builtin_prefetch(ws->upos[u + PF_DIST].slot, 1);
        ph_slot *slot = ws->upos[u].slot;
        if (!ws->new_ref[u])
            continue;   /* updated in place */
        if (slot) {
            atomic_store_explicit(&slot->ref, ws->new_ref[u], memory_order_release);
            pm_flush(t->pm, &slot->ref, sizeof(slot->ref));
        } else {
            ws->upos[u] = pethash_insert(&t->index, t->pm, ws->ukeys[u], ws->uhash[u], ws->new_ref[u]);
            added++;
        }
    }
    rc = pm_drain(t->pm);
    if (rc)
        return rc;
    atomic_fetch_add(&t->rows, added);
    for (size_t u = lo; u < hi; u++)
        if (ws->old_ref[u] && ws->new_ref[u])
            slab_retire(&t->pool, ws->old_ref[u]);
    slab_reclaim(&t->pool);
    return EMBPS_OK;
}

/* The dry run of an update: every new row and state computed into scratch and checked, changing
 * nothing.  Finite gradients can still overflow: summed over repeated keys, squared into optimizer
 * state, or scaled by the learning rate. */
static int check_update_finite(embps_table *t, size_t nu)
{
    write_scratch *ws = &t->ws;
    const size_t dim = t->dim;
    for (size_t u = 0; u < nu; u++) {
        const ph_slot *ahead = u + PF_DIST < nu ? ws->upos[u + PF_DIST].slot : NULL;
        if (ahead)
            prefetch_slab(slab_at(&t->pool, atomic_load(&ahead->ref)), t->pool.slab_bytes);
        const float *old = ws->init_slab;
        if (ws->upos[u].slot)
            old = (const float *)slab_at(&t->pool, atomic_load(&ws->upos[u].slot->ref));
        else
            init_row(&t->spec, ws->ukeys[u], ws->init_slab);
        if (!optimizer_step_is_finite(&t->spec, t->state_floats, old, old + dim, ws->ugrads + u * dim,
                                      ws->trial_slab))
            return nonfinite(t, ws->ukeys[u]);
    }
    return EMBPS_OK;
}

/* Rows [0, nu) in rounds of CHUNK_ROWS.  When the pool holds every new slab at once, nothing is
 * published before all are computed, so a row that would not be finite fails the update as a whole.
 * Otherwise each round is published in turn, bounding the slabs in flight, and an update is checked
 * beforehand by a dry run (as are a cache's, whose in-place rows cannot be taken back). */
static int write_all(embps_table *t, size_t nu, const assign_src *src)
{
    slab_reclaim(&t->pool);   /* the last write's old slabs, unless a reader may still see them */
    const int at_once = nu <= t->pool.n_slabs - t->pool.n_used;
    int rc = !src && (!at_once || t->volatile_) ? check_update_finite(t, nu) : EMBPS_OK;
    size_t published = 0;
    for (size_t lo = 0; lo < nu && !rc; lo += CHUNK_ROWS) {
        size_t hi = lo + CHUNK_ROWS < nu ? lo + CHUNK_ROWS : nu;
        if ((rc = fill_round(t, lo, hi, src))) {
            free_new_slabs(t, published, lo);   /* rounds filled but not yet published */
        } else if (!at_once || hi == nu) {
            rc = publish(t, published, hi);
            published = hi;
        }
    }
    return rc;
}

static int check_keys(const uint64_t *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (keys[i] == EMBPS_RESERVED_KEY)
            return fail(EMBPS_E_INVALID_ARGUMENT, "key %llu (2^64-1) is reserved", (unsigned long long)keys[i]);
    return EMBPS_OK;
}

/* Shared by update (src NULL: apply grads) and assign (src: overwrite). */
static int write_rows(embps_table *t, const uint64_t *keys, size_t n, const float *grads, const uint32_t *counts,
                      const assign_src *src)
{
    int rc = check_keys(keys, n);
    if (rc)
        return rc;
    pthread_mutex_lock(&t->write_lock);
    rc = grow_scratch(t, n);
    if (rc)
        goto out;
    write_scratch *ws = &t->ws;
    size_t nu = dedupe(t, keys, n, grads, counts);
    uint64_t added = 0;
    for (size_t u = 0; u < nu; u++) {   /* the lookup pipeline's prefetches, a key's tags then its slot */
        if (u + PF_DIST < nu)
            ph_prefetch_meta(&t->index, ws->uhash[u + PF_DIST]);
        if (u + PF_DIST / 2 < nu)
            (void)ph_prefetch_slot(&t->index, ws->uhash[u + PF_DIST / 2]);
        ws->upos[u] = pethash_find(&t->index, ws->ukeys[u], ws->uhash[u]);
        added += ws->upos[u].slot == NULL;
    }
    uint64_t rows = atomic_load(&t->rows);
    if (rows + added > t->spec.capacity) {
        rc = fail(EMBPS_E_CAPACITY, "table %s is full: %llu rows + %llu new > capacity %llu", t->name,
                  (unsigned long long)rows, (unsigned long long)added, (unsigned long long)t->spec.capacity);
        goto out;
    }
    if (src)  /* missing keys being assigned need no initial row */
        memset(ws->init_slab, 0, (t->dim + t->state_floats) * sizeof(float));
    else
        memset(ws->init_slab + t->dim, 0, t->state_floats * sizeof(float));
    rc = write_all(t, nu, src);
out:
    pthread_mutex_unlock(&t->write_lock);
    return rc;
}

int embps_table_update(embps_table *t, const uint64_t *keys, size_t n, const float *grads, size_t grads_len)
{
    return embps_table_update_counted(t, keys, n, grads, grads_len, NULL);
}

int embps_table_update_counted(embps_table *t, const uint64_t *keys, size_t n, const float *grads,
                               size_t grads_len, const uint32_t *counts)
{
    int rc = check_len("gradient", grads_len, n, t->dim);
    if (rc)
        return rc;
    if (!all_finite(grads, grads_len))
        return fail(EMBPS_E_NONFINITE, "gradients for table %s contain NaN or Inf; nothing was applied", t->name);
    for (size_t i = 0; counts && i < n; i++)
        if (!counts[i])
            return fail(EMBPS_E_INVALID_ARGUMENT, "gradient %zu counts 0 contributions; each carries at least 1", i);
    return write_rows(t, keys, n, grads, counts, NULL);
}

int embps_table_assign(embps_table *t, const uint64_t *keys, size_t n, const float *rows, size_t rows_len,
                       const float *state, size_t state_len)
{
    int rc = check_len("rows", rows_len, n, t->dim);
    if (!rc && state)
        rc = check_len("state", state_len, n, t->state_floats);
    if (rc)
        return rc;
    if (!all_finite(rows, rows_len) || (state && !all_finite(state, state_len)))
        return fail(EMBPS_E_NONFINITE, "rows for table %s contain NaN or Inf; nothing was written", t->name);
    assign_src src = {rows, state};
    return write_rows(t, keys, n, NULL, NULL, &src);
}

int embps_table_delete(embps_table *t, const uint64_t *keys, size_t n, uint64_t *deleted_out)
{
    pthread_mutex_lock(&t->write_lock);
    int rc = grow_scratch(t, n);
    uint64_t deleted = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        uint64_t h = mix64(keys[i]);
        ph_pos pos = pethash_find(&t->index, keys[i], h);
        if (!pos.slot)
            continue;
        t->ws.old_ref[deleted++] = atomic_load(&pos.slot->ref);
        pethash_remove(&t->index, t->pm, pos, h);
    }
    if (!rc && deleted)
        rc = pm_drain(t->pm);
    if (!rc) {
        atomic_fetch_sub(&t->rows, deleted);
        for (uint64_t i = 0; i < deleted; i++)
            slab_retire(&t->pool, t->ws.old_ref[i]);
        slab_reclaim(&t->pool);
        if (deleted_out)
            *deleted_out = deleted;
    }
    pthread_mutex_unlock(&t->write_lock);
    return rc;
}

/* ---- verification -------------------------------------------------------- */

int embps_table_check(embps_table *t)
{
    pthread_mutex_lock(&t->write_lock);
    const uint64_t n_buckets = t->index.mask + 1, n_slabs = t->pool.n_slabs;
    uint64_t *seen = calloc((n_slabs + 63) / 64, sizeof(uint64_t));
    uint64_t rows = 0;
    int rc = seen ? EMBPS_OK : fail(EMBPS_E_NOMEM, "out of memory checking table %s", t->name);
    for (uint64_t b = 0; b < n_buckets && !rc; b++) {
        const ph_meta *m = &t->index.meta[b];
        unsigned count = 0;
        for (unsigned i = 0; i < PH_SLOTS && !rc; i++) {
            ph_slot *s = &t->index.buckets[b].slot[i];
            uint64_t ref = atomic_load(&s->ref), h = mix64(s->key);
            if (!ref) {
                if (m->tags[i])
                    rc = fail(EMBPS_E_CORRUPT, "bucket %llu slot %u: tag set on an empty slot", (unsigned long long)b, i);
                continue;
            }
            count++;
            rows++;
            uint64_t slab = ref - 1;
            if (ref > n_slabs || m->tags[i] != ph_tag(h))
                rc = fail(EMBPS_E_CORRUPT, "bucket %llu slot %u: bad ref or tag", (unsigned long long)b, i);
            else if ((seen[slab / 64] >> (slab % 64)) & 1)
                rc = fail(EMBPS_E_CORRUPT, "slab %llu referenced twice", (unsigned long long)ref);
            else if (!slab_pool_is_used(&t->pool, ref))
                rc = fail(EMBPS_E_CORRUPT, "slab %llu is live but free in the allocator", (unsigned long long)ref);
            else if (pethash_find(&t->index, s->key, h).slot != s || pethash_get(&t->index, s->key, h) != ref)
                rc = fail(EMBPS_E_CORRUPT, "key %llu is not reachable from its home bucket",
                          (unsigned long long)s->key);
            if (!rc)
                seen[slab / 64] |= 1ull << (slab % 64);
        }
        if (!rc && count != m->count)
            rc = fail(EMBPS_E_CORRUPT, "bucket %llu: count %u, %u live slots", (unsigned long long)b, m->count, count);
    }
    if (!rc && rows != atomic_load(&t->rows))
        rc = fail(EMBPS_E_CORRUPT, "table %s counts %llu rows, the index holds %llu", t->name,
                  (unsigned long long)atomic_load(&t->rows), (unsigned long long)rows);
    if (!rc && t->pool.n_used != rows + t->pool.n_retired)
        rc = fail(EMBPS_E_CORRUPT, "table %s leaks slabs: %llu used, %llu rows, %llu retired", t->name,
                  (unsigned long long)t->pool.n_used, (unsigned long long)rows,
                  (unsigned long long)t->pool.n_retired);
    free(seen);
    pthread_mutex_unlock(&t->write_lock);
    return rc;
}
