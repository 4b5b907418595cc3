/*
 * embps native data path, the client side: one request and its reply per call, on a connection the
 * caller made, in C without the Python interpreter (the wire format is in embps_data_server.h).
 *
 * The caller owns the socket (connecting, pooling, closing); a call only reads and writes it, and
 * works on blocking and non-blocking sockets alike.
 */
#ifndef EMBPS_DATA_CLIENT_H
#define EMBPS_DATA_CLIENT_H

#include "embps_data_server.h"

#include <stddef.h>
#include <stdint.h>

/* How an exchange ended (the return value of embps_data_client_exchange). */
enum embps_exchange_end {
    EMBPS_EXCHANGE_REPLIED = 0,    /* the reply's header and message came: see reply->status */
    EMBPS_EXCHANGE_STALE = 1,      /* a pooled connection the shard had closed: nothing was sent */
    EMBPS_EXCHANGE_BROKEN = 2,     /* the connection failed or closed mid-exchange (embps_errormsg() says how) */
    EMBPS_EXCHANGE_TIMED_OUT = 3,  /* timeout_ms passed first */
};

/* What one exchange sends: an op of enum embps_wire_op with its flags, the table's name (name_len bytes,
 * at most 255, sent as they are: the server judges them), n_keys keys, and what follows them, in up to
 * two parts sent as they are (a part of 0 bytes is skipped): an update's n_keys x dim gradients (with
 * counts: then its n_keys counts), a refresh's n_keys versions and then its bound. */
typedef struct {
    uint8_t op, flags;
    const char *name;
    uint32_t name_len;
    const uint64_t *keys;
    uint32_t n_keys, dim;
    const void *body[2];
    size_t body_bytes[2];
} embps_exchange_request;

/* Sends rq on fd and receives the reply within timeout_ms of the call's start.  The reply's header goes
 * to *reply; its message to msg (at most msg_cap - 1 bytes and a NUL; reply->msg_len is what was kept,
 * the rest is read and dropped); its payload to payload: all of it if it fits in payload_cap bytes,
 * else the part that came with the header (the caller moves it, and embps_data_client_receive reads
 * the rest; reply->payload_bytes says how much there is).  *payload_got: the payload bytes in payload.
 * pooled: fd carried an earlier exchange, so a shard that closed it meanwhile (idle timeout, restart)
 * makes it readable before the request: STALE, and nothing is sent.  A shard that refuses the request
 * before reading it (too many connections) still has its reply read. */
EMBPS_API int embps_data_client_exchange(int fd, const embps_exchange_request *rq, int pooled, uint32_t timeout_ms,
                                         embps_wire_reply *reply, char *msg, size_t msg_cap, void *payload,
                                         size_t payload_cap, size_t *payload_got);
/* The next len bytes of fd into buf within timeout_ms: EMBPS_EXCHANGE_REPLIED once they came. */
EMBPS_API int embps_data_client_receive(int fd, void *buf, size_t len, uint32_t timeout_ms);

#endif
