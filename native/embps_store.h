/*
 * embps native store: persistent embedding tables on (emulated) persistent memory.
 *
 * A store is a directory; each table is one file in it holding a PetHash index
 * (buckets of 16 key/value-word slots) and a slab pool (row + optimizer state per
 * slab).  Files are mapped with libpmem2.  Every mutating call returns only after
 * its effect is persistent.  Reads take no locks.
 *
 * Conventions (after libpmem2): opaque handles, explicit config structs, every
 * call returns an embps_status; embps_errormsg() describes the last failure of
 * the calling thread.
 */
#ifndef EMBPS_STORE_H
#define EMBPS_STORE_H

#include <stddef.h>
#include <stdint.h>

#define EMBPS_NAME_MAX 63          /* table names: [A-Za-z0-9_.-]{1,63} */
#define EMBPS_RESERVED_KEY UINT64_MAX

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
    EMBPS_E_TOO_LARGE = 10,        /* data path: a request above the server's limits */
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

const char *embps_errormsg(void);
const char *embps_status_name(int status);

int embps_store_open(const embps_store_config *cfg, embps_store **out);
void embps_store_close(embps_store *s);
uint64_t embps_store_persist_points(const embps_store *s);  /* crash simulator counter */
size_t embps_store_table_count(embps_store *s);
const char *embps_store_table_name(embps_store *s, size_t i);

int embps_table_create(embps_store *s, const char *name, const embps_table_spec *spec, embps_table **out);
int embps_table_get(embps_store *s, const char *name, embps_table **out);
/* For servers: the handle stays valid until embps_table_release(s); a drop waits for it.
 * On failure nothing is held. */
int embps_table_acquire(embps_store *s, const char *name, embps_table **out);
void embps_table_release(embps_store *s);
/* Waits for acquired handles to be released, then invalidates the table's handle: handles taken
 * with embps_table_get or embps_table_create must not be in use. */
int embps_table_drop(embps_store *s, const char *name);
void embps_table_describe(embps_table *t, embps_table_spec *spec, embps_table_stats *stats);
uint32_t embps_state_floats(uint32_t optimizer, uint32_t dim);

/* Rows for keys into rows_out (n*dim floats) and, if state_out, optimizer
 * state (n*state_floats).  Missing keys get their deterministic initial row
 * (a zero row if the table reports missing keys) and zero state; found_out
 * (optional, n bytes) tells which were present. */
int embps_lookup(embps_table *t, const uint64_t *keys, size_t n,
                 float *rows_out, size_t rows_len, float *state_out, size_t state_len,
                 uint8_t *found_out);
/* Applies the table's optimizer; repeated keys have their gradients summed.
 * Missing keys start from their initial row. */
int embps_update(embps_table *t, const uint64_t *keys, size_t n, const float *grads, size_t grads_len);
/* Overwrites rows (and state, or zero state if NULL); the last of repeated keys wins. */
int embps_assign(embps_table *t, const uint64_t *keys, size_t n, const float *rows, size_t rows_len,
                 const float *state, size_t state_len);
int embps_delete(embps_table *t, const uint64_t *keys, size_t n, uint64_t *deleted_out);
/* Iterates present rows: start with *cursor = 0; done when *cursor == UINT64_MAX. */
int embps_export(embps_table *t, uint64_t *cursor, size_t max, uint64_t *keys_out,
                 float *rows_out, float *state_out, size_t *n_out);

/* Zero-copy gather for NIC / socket sends: one entry per key pointing at the
 * row (with_state: row and state) in the mapped pool.  The rows stay valid
 * until embps_gather_end(guard); missing keys get found = 0 and addr = 0. */
int embps_gather_begin(embps_table *t, const uint64_t *keys, size_t n, int with_state,
                       embps_sge *sge_out, uint64_t *guard_out);
void embps_gather_end(embps_table *t, uint64_t guard);
void embps_pool_region(embps_table *t, void **base, size_t *len);

/* Deterministic initial rows, as lookups of missing keys return them. */
int embps_init_rows(const embps_table_spec *spec, const uint64_t *keys, size_t n, float *rows_out, size_t rows_len);
/* The fused optimizer kernel on plain memory (n rows of dim, state_floats each). */
int embps_optimizer_apply(const embps_table_spec *spec, float *rows, float *state, const float *grads, size_t n);

/* Full invariant check: every slot reachable, no duplicate key, no slab shared or leaked. */
int embps_table_check(embps_table *t);

/* ---- The native data path: batched lookups and updates over TCP -----------------------
 *
 * The C core answers row traffic itself, one thread per connection, without the Python
 * interpreter; lookup replies are gathered straight from the rows in the pool with sendmsg (the
 * software twin of RDMA NIC gathering).  Control stays with the gRPC service.
 *
 * Wire format, little-endian.  Request: embps_wire_request, the table name (name_len bytes),
 * n_keys uint64 keys and, for updates, n_keys x dim float32 gradients.  Reply: embps_wire_reply,
 * msg_len bytes of error message, then payload_bytes of payload; a lookup's payload is n_keys
 * rows of dim (with_state: dim + state_floats) float32, then n_keys found bytes.  A malformed or
 * oversized request is answered with its status and the connection is closed. */
#define EMBPS_WIRE_MAGIC 0x31424d45u  /* "EMB1" */

enum embps_wire_op { EMBPS_OP_LOOKUP = 1, EMBPS_OP_UPDATE = 2 };
enum { EMBPS_WIRE_WITH_STATE = 1 };

typedef struct {
    uint32_t magic;
    uint8_t op, flags, name_len, reserved;
    uint32_t n_keys;
    uint32_t dim;               /* the client's idea of the table's dim, checked; 0 = any (lookups) */
} embps_wire_request;

typedef struct {
    uint32_t status;            /* enum embps_status */
    uint32_t msg_len;
    uint64_t payload_bytes;
} embps_wire_reply;

typedef struct embps_data_server embps_data_server;

typedef struct {
    const char *host;           /* address to bind, e.g. "127.0.0.1" or "0.0.0.0" */
    uint16_t port;              /* 0: any free port (see embps_data_server_port) */
    uint32_t max_batch_keys;
    uint64_t max_request_bytes;
    uint32_t max_connections;
    uint32_t send_timeout_ms;   /* a client that stops reading is disconnected after this */
} embps_data_server_config;

#define EMBPS_LATENCY_BUCKETS 12
/* Upper bounds of the latency buckets in microseconds; the last bucket has none (+Inf). */
extern const uint32_t embps_latency_bounds_us[EMBPS_LATENCY_BUCKETS - 1];

typedef struct {
    uint64_t requests, errors, keys;
    uint64_t latency_sum_ns;
    uint64_t latency_buckets[EMBPS_LATENCY_BUCKETS];   /* per bucket, not cumulative */
} embps_op_stats;

typedef struct {
    embps_op_stats lookup, update;
    uint64_t connections_total, connections_open;
    uint64_t bytes_in, bytes_out;
} embps_data_server_stats;

int embps_data_server_start(embps_store *s, const embps_data_server_config *cfg, embps_data_server **out);
uint16_t embps_data_server_port(const embps_data_server *d);
void embps_data_server_stats_get(embps_data_server *d, embps_data_server_stats *out);
/* Closes the listener and every connection, and joins their threads. */
void embps_data_server_stop(embps_data_server *d);

#endif
