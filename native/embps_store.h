/*
 * embps native store: persistent embedding tables on (emulated) persistent memory.
 *
 * A store is a directory; each table is one file in it holding a PetHash index
 * (buckets of 16 key/value-word slots) and a slab pool (row + optimizer state per
 * slab).  Files are mapped with libpmem2.  Every mutating call returns only after
 * its effect is persistent.  Reads take no locks.
 *
 * Conventions (after libpmem2): names are embps_<object>_<verb>, opaque handles,
 * explicit config structs, every call returns an embps_status; embps_errormsg()
 * describes the last failure of the calling thread.  The native TCP data path is
 * declared in embps_data_server.h.
 */
#ifndef EMBPS_STORE_H
#define EMBPS_STORE_H

#include <stddef.h>
#include <stdint.h>

/* Only what this header declares is exported from the extension (it is built with
 * -fvisibility=hidden). */
#if defined(__GNUC__)
#define EMBPS_API __attribute__((visibility("default")))
#else
#define EMBPS_API
#endif

/* The build's stamp, which the Python binding checks at import so that an extension built from
 * other declarations fails to load instead of misbehaving: build_store.py defines it as a hash of
 * the public declarations. */
#ifndef EMBPS_NATIVE_VERSION
#define EMBPS_NATIVE_VERSION "unstamped"
#endif

#define EMBPS_NAME_MAX 63          /* table names: [A-Za-z0-9_.-]{1,63} */
#define EMBPS_RESERVED_KEY UINT64_MAX
/* The longest a write waits for readers to release the retired slabs it needs (a lookup holds them
 * for its batch; the data server's replies for at most their send timeout, which is shorter). */
#define EMBPS_WRITE_WAIT_MS 60000u

enum embps_status {
    EMBPS_OK = 0,
    EMBPS_E_INVALID_ARGUMENT = 1,  /* bad sizes, reserved key, bad name or spec */
    EMBPS_E_NOT_FOUND = 2,         /* unknown table */
    EMBPS_E_EXISTS = 3,            /* table already exists */
    EMBPS_E_CAPACITY = 4,          /* table or slab pool full */
    EMBPS_E_NONFINITE = 5,         /* NaN or Inf in gradients or rows */
    EMBPS_E_IO = 6,                /* file system or mapping failure */
    EMBPS_E_CORRUPT = 7,           /* file is not a valid table */
    EMBPS_E_NOMEM = 8,
    EMBPS_E_CRASHED = 9,           /* crash simulator: the simulated power failure happened */
    EMBPS_E_TOO_LARGE = 10,        /* data path: a request or a connection above the server's limits */
    EMBPS_E_PROTOCOL = 11,         /* data path: malformed request bytes */
};

enum embps_optimizer { EMBPS_OPT_SGD = 0, EMBPS_OPT_ADAGRAD = 1, EMBPS_OPT_ROWWISE_ADAGRAD = 2, EMBPS_OPT_ADAM = 3 };
enum embps_init { EMBPS_INIT_ZEROS = 0, EMBPS_INIT_UNIFORM = 1, EMBPS_INIT_NORMAL = 2 };
/* What a lookup returns for a key never written: its initial row, or a zero row (found = 0 either way). */
enum embps_missing { EMBPS_MISSING_INITIALIZE = 0, EMBPS_MISSING_REPORT = 1 };

typedef struct embps_store embps_store;
typedef struct embps_table embps_table;

typedef struct {
    const char *dir;            /* created if missing, with its parents */
    /* Crash simulator: PM stores stay volatile until persisted.  At persist
     * point crash_at (1-based; 0 = never) the simulated power fails: each
     * table file keeps what was persisted, plus each dirty unpersisted cache
     * line with probability crash_evict_prob (the cache may write back any
     * line at any time), and every later call fails with EMBPS_E_CRASHED. */
    int crash_sim;
    uint64_t crash_at;
    double crash_evict_prob;
    uint64_t crash_seed;
    /* For caches: tables skip every flush and fence, so a crash loses their contents, and updates
     * of present rows happen in place, so a reader racing an update of the same key may see a mix
     * of old and new values (a cache's owner never reads a row it is updating).  Mutating calls
     * return once the change is visible, not persistent. */
    int volatile_tables;
} embps_store_config;

typedef struct {
    uint32_t dim;
    uint64_t capacity;          /* maximum number of rows */
    uint32_t optimizer;         /* enum embps_optimizer */
    double lr, eps, beta1, beta2;   /* doubles, as PyTorch keeps hyper-parameters */
    uint32_t init;              /* enum embps_init */
    double init_scale;          /* uniform: [-scale, scale); normal: stddev */
    uint64_t init_seed;
    uint32_t missing;           /* enum embps_missing */
} embps_table_spec;

typedef struct {
    uint64_t rows;
    uint64_t buckets;
    uint64_t slabs_total, slabs_used, slabs_retired;  /* retired = awaiting safe reclamation */
    uint32_t state_floats;      /* optimizer state per row */
    uint32_t slab_bytes;
    uint64_t file_bytes;
    double recovery_seconds;    /* time the last open spent rebuilding DRAM state */
} embps_table_stats;

/* One scatter-gather entry: a row (and state) in the mapped pool. */
typedef struct {
    uint64_t addr;
    uint32_t len;
    uint32_t found;
} embps_sge;

/* ---- status and version -------------------------------------------------- */

/* The last failure of the calling thread, in words. */
EMBPS_API const char *embps_errormsg(void);
EMBPS_API const char *embps_status_name(int status);
/* EMBPS_NATIVE_VERSION of this build. */
EMBPS_API const char *embps_version(void);

/* ---- stores -------------------------------------------------------------- */

EMBPS_API int embps_store_open(const embps_store_config *cfg, embps_store **out);
EMBPS_API void embps_store_close(embps_store *s);
EMBPS_API uint64_t embps_store_persist_points(const embps_store *s);  /* crash simulator counter */
/* The name of the store's table number i (from 0; NOT_FOUND past the last) into name, which holds
 * EMBPS_NAME_MAX + 1 bytes.  A table file the store found but could not open is listed too and keeps
 * its name: embps_table_get and embps_table_acquire fail with the reason, a drop removes the file. */
EMBPS_API int embps_store_table_at(embps_store *s, size_t i, char *name);

/* ---- tables -------------------------------------------------------------- */

/* The table exists only once its file is made and opened; the file's blocks are reserved, so a
 * file system without the room fails the create (CAPACITY) rather than a later write. */
EMBPS_API int embps_table_create(embps_store *s, const char *name, const embps_table_spec *spec,
                                 embps_table **out);
EMBPS_API int embps_table_get(embps_store *s, const char *name, embps_table **out);
/* For servers: a reference to the table, valid until embps_table_release(s, t).  A drop of this table
 * waits for its references; calls on other tables never wait for them.  On failure nothing is held. */
EMBPS_API int embps_table_acquire(embps_store *s, const char *name, embps_table **out);
EMBPS_API void embps_table_release(embps_store *s, embps_table *t);
/* Makes the table unreachable at once (acquire and get answer NOT_FOUND), waits for its references
 * to be released, then closes it and removes its file: handles taken with embps_table_get or
 * embps_table_create must not be in use.  The name is free again when the drop returns. */
EMBPS_API int embps_table_drop(embps_store *s, const char *name);
EMBPS_API void embps_table_describe(embps_table *t, embps_table_spec *spec, embps_table_stats *stats);

/* Rows for keys into rows_out (n*dim floats) and, if state_out, optimizer
 * state (n*state_floats).  Missing keys get their deterministic initial row
 * (a zero row if the table reports missing keys) and zero state; found_out
 * (optional, n bytes) tells which were present. */
EMBPS_API int embps_table_lookup(embps_table *t, const uint64_t *keys, size_t n, float *rows_out, size_t rows_len,
                                 float *state_out, size_t state_len, uint8_t *found_out);
/* Applies the table's optimizer; repeated keys have their gradients summed.
 * Missing keys start from their initial row.  An update that would store NaN or Inf (finite inputs
 * can overflow) fails with NONFINITE and changes nothing.
 * Every row has a version clock, kept in its slab and so persisted with its values and state in the
 * same failure-atomic step: an update advances it by the gradient contributions it carries, one per
 * occurrence of the key (a key given k times advances it by k). */
EMBPS_API int embps_table_update(embps_table *t, const uint64_t *keys, size_t n, const float *grads,
                                 size_t grads_len);
/* An update whose i-th gradient counts as counts[i] contributions (each at least 1): a summed gradient
 * of several contributions, as a mirror pushes it, advances the version by all of them. */
EMBPS_API int embps_table_update_counted(embps_table *t, const uint64_t *keys, size_t n, const float *grads,
                                         size_t grads_len, const uint32_t *counts);
/* A lookup that also returns each row's version into versions_out (n; 0 for a key never written); each
 * version is read from the same slab as its row and state. */
EMBPS_API int embps_table_lookup_versioned(embps_table *t, const uint64_t *keys, size_t n, float *rows_out,
                                           size_t rows_len, float *state_out, size_t state_len,
                                           uint64_t *versions_out);
/* Refresh of mirrors: for each keys[i] held elsewhere at versions[i], selects it when its version is
 * more than bound ahead of versions[i] (versions[i] = EMBPS_NO_VERSION, "no copy", always).  The m
 * selected go, in request order, to index_out (their positions i), versions_out, and rows_out (m rows of
 * dim, or with_state dim + state_floats), each buffer sized for n; *m_out = m. */
#define EMBPS_NO_VERSION UINT64_MAX
EMBPS_API int embps_table_lookup_stale(embps_table *t, const uint64_t *keys, const uint64_t *versions, size_t n,
                                       uint64_t bound, int with_state, uint32_t *index_out,
                                       uint64_t *versions_out, float *rows_out, size_t rows_len, size_t *m_out);
/* Overwrites rows (and state, or zero state if NULL); the last of repeated keys wins.  An assign is one
 * write that mirrors must see: it advances the version by 1 (from 0 for a new row). */
EMBPS_API int embps_table_assign(embps_table *t, const uint64_t *keys, size_t n, const float *rows, size_t rows_len,
                                 const float *state, size_t state_len);
EMBPS_API int embps_table_delete(embps_table *t, const uint64_t *keys, size_t n, uint64_t *deleted_out);
/* Iterates present rows: start with *cursor = 0; done when *cursor == UINT64_MAX. */
EMBPS_API int embps_table_export(embps_table *t, uint64_t *cursor, size_t max, uint64_t *keys_out,
                                 float *rows_out, float *state_out, size_t *n_out);

/* Zero-copy gather for NIC / socket sends: one entry per key pointing at the
 * row (with_state: row and state) in the mapped pool.  The rows stay valid
 * until embps_table_gather_end(guard); missing keys get found = 0 and addr = 0. */
EMBPS_API int embps_table_gather_begin(embps_table *t, const uint64_t *keys, size_t n, int with_state,
                                       embps_sge *sge_out, uint64_t *guard_out);
EMBPS_API void embps_table_gather_end(embps_table *t, uint64_t guard);
/* The slab pool's memory: what an RDMA NIC registers. */
EMBPS_API void embps_table_pool_region(embps_table *t, void **base, size_t *len);

/* Full invariant check: every slot reachable, no duplicate key, no slab shared or leaked. */
EMBPS_API int embps_table_check(embps_table *t);

/* ---- kernels on plain memory --------------------------------------------- */

/* Optimizer state floats stored beside each row of dim. */
EMBPS_API uint32_t embps_optimizer_state_floats(uint32_t optimizer, uint32_t dim);
/* The fused optimizer step a table's update applies, on n rows of dim (state_floats each); like an
 * update, it fails with NONFINITE and changes nothing if a step would give NaN or Inf. */
EMBPS_API int embps_optimizer_apply(const embps_table_spec *spec, float *rows, float *state, const float *grads,
                                    size_t n);
/* Deterministic initial rows, as lookups of missing keys return them. */
EMBPS_API int embps_initializer_fill(const embps_table_spec *spec, const uint64_t *keys, size_t n, float *rows_out,
                                     size_t rows_len);

#endif
