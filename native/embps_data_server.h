/*
 * embps native data path: batched lookups and updates over TCP, answered by the C core.
 *
 * The server runs one thread per connection, without the Python interpreter; lookup replies are
 * gathered straight from the rows in the pool with sendmsg (the software twin of RDMA NIC
 * gathering), except that short rows are copied into one buffer first, which costs the kernel less.
 * Control (creating, dropping, describing tables) stays with the gRPC service.
 */
#ifndef EMBPS_DATA_SERVER_H
#define EMBPS_DATA_SERVER_H

#include "embps_store.h"

#include <stddef.h>
#include <stdint.h>

/* ---- the wire protocol --------------------------------------------------- */

/* Little-endian, the structs sent as they are in memory (their layout is asserted below, and the
 * Python client checks it against what it packs).
 *
 * Request: embps_wire_request, the table name (name_len bytes), n_keys uint64 keys and, for
 * updates, n_keys x dim float32 gradients (with_counts: then n_keys uint32 contributions, each >= 1,
 * that advance the rows' versions); for a refresh, n_keys uint64 versions the client holds
 * (EMBPS_NO_VERSION: no copy), then one uint64 staleness bound.
 * Reply: embps_wire_reply, msg_len bytes of error message, then payload_bytes of payload; a
 * lookup's payload is n_keys rows of dim (with_state: dim + state_floats) float32, then n_keys
 * found bytes; a refresh's is a uint64 m, the count of rows more than the bound ahead, then their
 * m uint64 versions, m uint32 positions in the request and m rows (with_state: and state), so that a
 * row the client holds fresh costs its 16 request bytes only.
 * A malformed or oversized request is answered with its status and the connection is closed; so is
 * a connection beyond the server's limit, before it sends anything (TOO_LARGE). */
#define EMBPS_WIRE_MAGIC 0x31424d45u  /* "EMB1" */

enum embps_wire_op { EMBPS_WIRE_OP_LOOKUP = 1, EMBPS_WIRE_OP_UPDATE = 2, EMBPS_WIRE_OP_REFRESH = 3 };
/* Request flags: lookup and refresh replies carry optimizer state; an update carries counts. */
enum { EMBPS_WIRE_WITH_STATE = 1, EMBPS_WIRE_WITH_COUNTS = 2 };

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

_Static_assert(sizeof(embps_wire_request) == 16, "embps_wire_request is 16 bytes on the wire");
_Static_assert(offsetof(embps_wire_request, op) == 4, "embps_wire_request.op at byte 4");
_Static_assert(offsetof(embps_wire_request, flags) == 5, "embps_wire_request.flags at byte 5");
_Static_assert(offsetof(embps_wire_request, name_len) == 6, "embps_wire_request.name_len at byte 6");
_Static_assert(offsetof(embps_wire_request, reserved) == 7, "embps_wire_request.reserved at byte 7");
_Static_assert(offsetof(embps_wire_request, n_keys) == 8, "embps_wire_request.n_keys at byte 8");
_Static_assert(offsetof(embps_wire_request, dim) == 12, "embps_wire_request.dim at byte 12");
_Static_assert(sizeof(embps_wire_reply) == 16, "embps_wire_reply is 16 bytes on the wire");
_Static_assert(offsetof(embps_wire_reply, msg_len) == 4, "embps_wire_reply.msg_len at byte 4");
_Static_assert(offsetof(embps_wire_reply, payload_bytes) == 8, "embps_wire_reply.payload_bytes at byte 8");

/* ---- the server ---------------------------------------------------------- */

typedef struct embps_data_server embps_data_server;

/* Every wait on a client is bounded, so that no client holds a thread, a connection slot, a table or
 * the rows a reply is sent from for longer than these (all non-zero). */
typedef struct {
    const char *host;           /* address to bind, e.g. "127.0.0.1" or "0.0.0.0" */
    uint16_t port;              /* 0: any free port (see embps_data_server_port) */
    uint32_t max_batch_keys;
    uint64_t max_request_bytes;
    /* A client beyond it is answered TOO_LARGE "too many connections" and closed. */
    uint32_t max_connections;
    /* A reply not sent within this (counted from its first wait for the client) cuts the connection.
     * Below EMBPS_WRITE_WAIT_MS: writers wait that long for the rows a reply pins. */
    uint32_t send_timeout_ms;
    /* A request not received within this (counted from its first wait) closes the connection. */
    uint32_t receive_timeout_ms;
    /* A connection that starts no request for this long is closed. */
    uint32_t idle_timeout_ms;
} embps_data_server_config;

#define EMBPS_LATENCY_BUCKETS 12
/* Upper bounds of the latency buckets in microseconds; the last bucket has none (+Inf). */
EMBPS_API extern const uint32_t embps_data_server_latency_bounds_us[EMBPS_LATENCY_BUCKETS - 1];

typedef struct {
    uint64_t requests, errors, keys;
    uint64_t latency_sum_ns;
    uint64_t latency_buckets[EMBPS_LATENCY_BUCKETS];   /* per bucket, not cumulative */
} embps_data_server_op_stats;

typedef struct {
    embps_data_server_op_stats lookup, update, refresh;
    uint64_t connections_total, connections_open;
    uint64_t connections_refused;   /* beyond max_connections */
    uint64_t connections_timed_out; /* idle, a request or a reply past its timeout */
    uint64_t bytes_in, bytes_out;
} embps_data_server_stats;

EMBPS_API int embps_data_server_start(embps_store *s, const embps_data_server_config *cfg,
                                      embps_data_server **out);
EMBPS_API uint16_t embps_data_server_port(const embps_data_server *d);
EMBPS_API void embps_data_server_stats_get(embps_data_server *d, embps_data_server_stats *out);
/* Closes the listener and every connection, and joins their threads. */
EMBPS_API void embps_data_server_stop(embps_data_server *d);

#endif
