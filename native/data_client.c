/* data_client.c -- the native TCP data path's client side: one request and its reply per call. */
#include "embps_data_client.h"
#include "socket_io.h"
#include "status.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

/* A pooled connection has nothing to read between exchanges: readable means the shard closed it (or
 * broke the protocol), so it must not carry a request the shard might never see. */
static int is_stale(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) != 0;
}

/* Why a send or receive stopped: the deadline, or the connection (errno, 0 when the shard closed it). */
static int broken(const deadline *dl, const char *doing)
{
    if (deadline_passed(dl)) {
        fail(EMBPS_E_IO, "data path call timed out %s", doing);
        return EMBPS_EXCHANGE_TIMED_OUT;
    }
    fail(EMBPS_E_IO, "data path connection failed %s: %s", doing,
         errno ? strerror(errno) : "the shard closed the connection");
    return EMBPS_EXCHANGE_BROKEN;
}

/* The message's first msg_cap - 1 bytes into msg, NUL-terminated; the rest read and dropped.  Its
 * first `have` bytes (at most msg_len) came already, at early. */
static int recv_message(int fd, embps_wire_reply *reply, const char *early, size_t have, char *msg, size_t msg_cap,
                        deadline *dl)
{
    size_t keep = reply->msg_len < msg_cap ? reply->msg_len : msg_cap - 1;
    size_t kept = have < keep ? have : keep;
    if (kept)
        memcpy(msg, early, kept);
    if (recv_all(fd, msg + kept, keep - kept, dl))
        return -1;
    msg[keep] = '\0';
    char drop[256];
    for (size_t left = reply->msg_len - (have > keep ? have : keep); left;) {
        size_t chunk = left < sizeof(drop) ? left : sizeof(drop);
        if (recv_all(fd, drop, chunk, dl))
            return -1;
        left -= chunk;
    }
    reply->msg_len = (uint32_t)keep;
    return 0;
}

/* The reply to the request just sent: its header and, in the same recvmsg as a rule, what follows it
 * straight into payload (a reply is all the connection carries until the next request, so reading
 * ahead takes nothing of another).  What came early of an error's message is moved out of payload.
 * *got: the payload bytes now in payload, all of them if they fit in payload_cap. */
static int recv_reply(int fd, embps_wire_reply *reply, char *msg, size_t msg_cap, char *payload, size_t payload_cap,
                      size_t *got, deadline *dl)
{
    if (wait_ready(fd, POLLIN, dl))   /* a read now would only find the reply not there yet */
        return -1;
    struct iovec iov[2] = {{reply, sizeof(*reply)}, {payload, payload_cap}};
    ssize_t n = recv_iov(fd, iov, payload_cap ? 2 : 1, sizeof(*reply), dl);
    if (n < 0)
        return -1;
    size_t early = (size_t)n - sizeof(*reply), early_msg = early < reply->msg_len ? early : reply->msg_len;
    if (recv_message(fd, reply, payload, early_msg, msg, msg_cap, dl))
        return -1;
    early -= early_msg;
    if (early > reply->payload_bytes) {
        errno = EPROTO;   /* bytes beyond the reply: not an embps shard */
        return -1;
    }
    if (early_msg && early)
        memmove(payload, payload + early_msg, early);
    *got = early;
    if (reply->payload_bytes > payload_cap)
        return 0;
    if (reply->payload_bytes > early && recv_all(fd, payload + early, reply->payload_bytes - early, dl))
        return -1;
    *got = reply->payload_bytes;
    return 0;
}

int embps_data_client_exchange(int fd, const embps_exchange_request *rq, int pooled, uint32_t timeout_ms,
                               embps_wire_reply *reply, char *msg, size_t msg_cap, void *payload, size_t payload_cap,
                               size_t *payload_got)
{
    const size_t name_len = rq->name_len;
    if (name_len > UINT8_MAX || !msg_cap) {   /* the connection is left untouched */
        fail(EMBPS_E_INVALID_ARGUMENT, "a table name of %zu bytes cannot be framed (at most %d)", name_len,
             UINT8_MAX);
        return EMBPS_EXCHANGE_BROKEN;
    }
    if (pooled && is_stale(fd))
        return EMBPS_EXCHANGE_STALE;
    deadline dl = {.timeout_ms = timeout_ms, .at_ns = now_ns() + (uint64_t)timeout_ms * 1000000u};
    embps_wire_request header = {.magic = EMBPS_WIRE_MAGIC, .op = rq->op, .flags = rq->flags,
                                 .name_len = (uint8_t)name_len, .n_keys = rq->n_keys, .dim = rq->dim};
    struct iovec iov[5] = {{&header, sizeof(header)}, {(void *)rq->name, name_len},
                           {(void *)rq->keys, (size_t)rq->n_keys * sizeof(uint64_t)}};
    size_t n_iov = 3;
    for (int part = 0; part < 2; part++)
        if (rq->body_bytes[part])
            iov[n_iov++] = (struct iovec){(void *)rq->body[part], rq->body_bytes[part]};
    /* A shard refusing the connection answers before it reads: the reply says why. */
    if (send_iov(fd, iov, n_iov, &dl) && errno != EPIPE && errno != ECONNRESET)
        return broken(&dl, "sending the request");
    if (recv_reply(fd, reply, msg, msg_cap, payload, payload_cap, payload_got, &dl))
        return broken(&dl, "receiving the reply");
    return EMBPS_EXCHANGE_REPLIED;
}

int embps_data_client_receive(int fd, void *buf, size_t len, uint32_t timeout_ms)
{
    deadline dl = {.timeout_ms = timeout_ms, .at_ns = now_ns() + (uint64_t)timeout_ms * 1000000u};
    return recv_all(fd, buf, len, &dl) ? broken(&dl, "receiving the reply") : EMBPS_EXCHANGE_REPLIED;
}
