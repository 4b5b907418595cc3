/* data_server.c -- the native TCP data path: batched lookups and updates answered in C.
 *
 * One thread per connection.  Lookup replies go out with sendmsg straight from the rows in the
 * pool, pinned by the gather guard until the kernel has copied them (the software twin of NIC
 * gathering); a reply of small rows is copied into one buffer first, because the kernel pays more
 * per iovec than a copy of a short row costs.  Every wait on a client has a deadline (see
 * embps_data_server_config), so a client that stalls holds a guard, a table and a connection slot for
 * a bounded time only. */
#include "embps_data_server.h"
#include "socket_io.h"
#include "status.h"
#include "table.h"
#include "wire_request.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* The wire structs go out as they are in memory. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the data path's wire format is little-endian"
#endif

const uint32_t embps_data_server_latency_bounds_us[EMBPS_LATENCY_BUCKETS - 1] = {
    50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000, 1000000,
};

typedef struct {
    _Atomic uint64_t requests, errors, keys, latency_sum_ns;
    _Atomic uint64_t latency_buckets[EMBPS_LATENCY_BUCKETS];
} op_counters;

typedef struct connection {
    struct embps_data_server *server;
    int fd;
    pthread_t thread;
    _Atomic int finished;
    int cut;                    /* a reply passed its deadline: reset, dropping what the kernel still holds */
    struct connection *next;
    /* Per-connection buffers, grown to the largest request seen. */
    void *in;
    size_t in_cap;
    embps_sge *sge;
    struct iovec *iov;
    uint8_t *found;
    float *missing;
    size_t batch_cap, missing_cap;
    void *stale;                /* a refresh's answer: versions, positions, rows */
    size_t stale_cap;
    void *copied;               /* a lookup's payload of small rows, copied (see COPY_ROW_MAX) */
    size_t copied_cap;
} connection;

/* A lookup's rows of at most COPY_ROW_MAX bytes, COPY_PAYLOAD_MAX bytes in all, are copied into one
 * buffer and sent as one iovec: sendmsg costs far more per iovec than the copy of such a row (a 512-key
 * batch of 128-byte rows takes about half the CPU).  Longer rows or payloads are gathered from the
 * pool, where the copy would cost more than the iovecs it saves. */
#define COPY_ROW_MAX 256
#define COPY_PAYLOAD_MAX (128u << 10)

struct embps_data_server {
    embps_store *store;
    embps_data_server_config cfg;
    int listen_fd, wake_pipe[2];
    uint16_t port;
    pthread_t acceptor;
    pthread_mutex_t lock;       /* guards conns */
    connection *conns;
    op_counters lookup, update, refresh;
    _Atomic uint64_t connections_total, connections_open, connections_refused, connections_timed_out;
    _Atomic uint64_t bytes_in, bytes_out;
};

/* ---- replies ------------------------------------------------------------- */

/* The reply of a failed call, its status and embps_errormsg(), in reply and iov[2]; returns its bytes. */
static uint64_t error_reply(int status, embps_wire_reply *reply, struct iovec *iov)
{
    const char *msg = embps_errormsg();
    *reply = (embps_wire_reply){.status = (uint32_t)status, .msg_len = (uint32_t)strlen(msg)};
    iov[0] = (struct iovec){reply, sizeof(*reply)};
    iov[1] = (struct iovec){(void *)msg, reply->msg_len};
    return sizeof(*reply) + reply->msg_len;
}

/* A reply within the send timeout; 0 once sent, -1 if the connection broke or the deadline passed. */
static int send_reply(connection *c, struct iovec *iov, size_t n, uint64_t bytes)
{
    deadline dl = {.timeout_ms = c->server->cfg.send_timeout_ms};
    atomic_fetch_add(&c->server->bytes_out, bytes);
    if (!send_iov(c->fd, iov, n, &dl))
        return 0;
    c->cut = deadline_passed(&dl);
    if (c->cut)
        atomic_fetch_add(&c->server->connections_timed_out, 1);
    return -1;
}

/* Returns status once sent, or -1 if the connection broke. */
static int send_error(connection *c, int status)
{
    embps_wire_reply reply;
    struct iovec iov[2];
    uint64_t bytes = error_reply(status, &reply, iov);
    return send_reply(c, iov, 2, bytes) ? -1 : status;
}

/* ---- buffers ------------------------------------------------------------- */

static int grow(void **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    void *p = realloc(*buf, need);
    if (!p)
        return -1;
    *buf = p;
    *cap = need;
    return 0;
}

static int reserve_batch(connection *c, size_t n)
{
    if (n == 0)
        n = 1;   /* a lookup of no keys still sends its reply through iov */
    if (n <= c->batch_cap)
        return EMBPS_OK;
    embps_sge *sge = realloc(c->sge, n * sizeof(*sge));
    if (sge)
        c->sge = sge;
    struct iovec *iov = realloc(c->iov, (n + 3) * sizeof(*iov));
    if (iov)
        c->iov = iov;
    uint8_t *found = realloc(c->found, n);
    if (found)
        c->found = found;
    if (!sge || !iov || !found)
        return fail(EMBPS_E_NOMEM, "out of memory for a batch of %zu keys", n);
    c->batch_cap = n;
    return EMBPS_OK;
}

/* ---- operations ---------------------------------------------------------- */

static void count(op_counters *op, uint64_t keys, uint64_t start_ns, int failed)
{
    uint64_t ns = now_ns() - start_ns;
    size_t b = 0;
    while (b < EMBPS_LATENCY_BUCKETS - 1 && ns > (uint64_t)embps_data_server_latency_bounds_us[b] * 1000)
        b++;
    atomic_fetch_add(&op->requests, 1);
    atomic_fetch_add(&op->keys, keys);
    atomic_fetch_add(&op->latency_sum_ns, ns);
    atomic_fetch_add(&op->latency_buckets[b], 1);
    if (failed)
        atomic_fetch_add(&op->errors, 1);
}

/* Rows of missing keys are the only bytes the reply needs that are not already in the pool. */
static int fill_missing(connection *c, embps_table *t, const embps_table_spec *spec, const uint64_t *keys,
                        size_t n, size_t width, float **missing)
{
    size_t n_missing = 0;
    for (size_t i = 0; i < n; i++)
        n_missing += !c->sge[i].found;
    if (grow((void **)&c->missing, &c->missing_cap, n_missing * width * sizeof(float)))
        return fail(EMBPS_E_NOMEM, "out of memory for %zu missing rows", n_missing);
    float *row = c->missing;
    for (size_t i = 0; i < n; i++) {
        if (c->sge[i].found)
            continue;
        table_missing_row(t, keys[i], row);
        memset(row + spec->dim, 0, (width - spec->dim) * sizeof(float));   /* zero optimizer state */
        row += width;
    }
    *missing = c->missing;
    return EMBPS_OK;
}

/* The payload of a lookup whose rows c->sge and missing hold, copied into c->copied: its rows, then
 * its found bytes.  Returns -1 without the memory for it. */
static int copy_payload(connection *c, size_t n, size_t row_bytes, const float *missing)
{
    if (n == 0)
        return 0;   /* no buffer yet, maybe: nothing to point into */
    if (grow(&c->copied, &c->copied_cap, n * (row_bytes + 1)))
        return -1;
    char *row = c->copied;
    uint8_t *found = (uint8_t *)row + n * row_bytes;
    for (size_t i = 0; i < n; i++, row += row_bytes) {
        found[i] = (uint8_t)c->sge[i].found;
        if (found[i]) {
            memcpy(row, (const char *)(uintptr_t)c->sge[i].addr, row_bytes);
        } else {
            memcpy(row, missing, row_bytes);
            missing += row_bytes / sizeof(float);
        }
    }
    return 0;
}

/* Answers with the copied payload (copy_payload) in one iovec; the guard ends before the send. */
static int send_copied(connection *c, embps_table *t, uint64_t guard, size_t n, size_t row_bytes,
                       const float *missing)
{
    int copied = copy_payload(c, n, row_bytes, missing);
    embps_table_gather_end(t, guard);   /* the rows are copied */
    if (copied)
        return send_error(c, fail(EMBPS_E_NOMEM, "out of memory for a reply of %zu keys", n));
    embps_wire_reply reply = {.status = EMBPS_OK, .payload_bytes = n * (row_bytes + 1)};
    struct iovec iov[2] = {{&reply, sizeof(reply)}, {c->copied, reply.payload_bytes}};
    return send_reply(c, iov, n ? 2 : 1, sizeof(reply) + reply.payload_bytes) ? -1 : EMBPS_OK;
}

/* Answers with the rows copied (send_copied) when they are small, else with one iovec per run of
 * adjacent rows, pointing into the pool.  Like every operation, returns the status sent, or -1 if the
 * connection broke. */
static int lookup(connection *c, embps_table *t, const embps_table_spec *spec, const uint64_t *keys, size_t n,
                  int with_state)
{
    uint64_t guard;
    int rc = embps_table_gather_begin(t, keys, n, with_state, c->sge, &guard);
    if (rc)
        return send_error(c, rc);
    const size_t width = spec->dim + (with_state ? embps_optimizer_state_floats(spec->optimizer, spec->dim) : 0);
    const size_t row_bytes = width * sizeof(float);
    float *missing = NULL;
    rc = fill_missing(c, t, spec, keys, n, width, &missing);
    if (rc) {
        embps_table_gather_end(t, guard);
        return send_error(c, rc);
    }
    if (row_bytes <= COPY_ROW_MAX && n * (row_bytes + 1) <= COPY_PAYLOAD_MAX)
        return send_copied(c, t, guard, n, row_bytes, missing);
    embps_wire_reply reply = {.status = EMBPS_OK, .payload_bytes = n * (row_bytes + 1)};
    size_t k = 0;
    c->iov[k++] = (struct iovec){&reply, sizeof(reply)};
    for (size_t i = 0; i < n; i++) {
        char *src = c->sge[i].found ? (char *)(uintptr_t)c->sge[i].addr : (char *)missing;
        if (!c->sge[i].found)
            missing += width;
        c->found[i] = (uint8_t)c->sge[i].found;
        struct iovec *last = &c->iov[k - 1];
        if (k > 1 && (char *)last->iov_base + last->iov_len == src)
            last->iov_len += row_bytes;
        else
            c->iov[k++] = (struct iovec){src, row_bytes};
    }
    c->iov[k++] = (struct iovec){c->found, n};
    int sent = send_reply(c, c->iov, k, sizeof(reply) + reply.payload_bytes);
    embps_table_gather_end(t, guard);   /* sendmsg returned: the kernel holds its own copy */
    return sent ? -1 : EMBPS_OK;
}

static int update(connection *c, embps_table *t, const uint64_t *keys, size_t n, const float *grads, uint32_t dim,
                  int with_counts)
{
    const uint32_t *counts = with_counts ? (const uint32_t *)(grads + (size_t)n * dim) : NULL;
    int rc = embps_table_update_counted(t, keys, n, grads, (size_t)n * dim, counts);
    if (rc)
        return send_error(c, rc);
    embps_wire_reply reply = {.status = EMBPS_OK};
    struct iovec iov = {&reply, sizeof(reply)};
    return send_reply(c, &iov, 1, sizeof(reply)) ? -1 : EMBPS_OK;
}

/* Answers only the rows more than bound versions ahead of what the client holds. */
static int refresh(connection *c, embps_table *t, const embps_table_spec *spec, const uint64_t *keys, size_t n,
                   int with_state)
{
    const uint64_t *held = keys + n, bound = held[n];
    const size_t width = spec->dim + (with_state ? embps_optimizer_state_floats(spec->optimizer, spec->dim) : 0);
    if (grow(&c->stale, &c->stale_cap, n * (12 + width * sizeof(float)) + 1))
        return send_error(c, fail(EMBPS_E_NOMEM, "out of memory for a refresh of %zu keys", n));
    uint64_t *versions = c->stale;
    uint32_t *index = (uint32_t *)(versions + n);
    float *rows = (float *)(index + n);
    size_t m;
    int rc = embps_table_lookup_stale(t, keys, held, n, bound, with_state, index, versions, rows, n * width, &m);
    if (rc)
        return send_error(c, rc);
    uint64_t m64 = m;
    embps_wire_reply reply = {.status = EMBPS_OK, .payload_bytes = 8 + m * (12 + width * sizeof(float))};
    struct iovec iov[5] = {{&reply, sizeof(reply)}, {&m64, 8}, {versions, m * 8}, {index, m * 4},
                           {rows, m * width * sizeof(float)}};
    return send_reply(c, iov, 5, sizeof(reply) + reply.payload_bytes) ? -1 : EMBPS_OK;
}

/* Bytes per key of a request's body after its name: keys, and gradients, counts or versions. */
static uint64_t body_bytes(const embps_wire_request *rq, uint64_t *fixed)
{
    *fixed = 0;
    if (rq->op == EMBPS_WIRE_OP_REFRESH) {
        *fixed = 8;   /* the bound */
        return 16;
    }
    if (rq->op == EMBPS_WIRE_OP_UPDATE)
        return 8 + (rq->flags & EMBPS_WIRE_WITH_COUNTS ? 4 : 0);
    return 8;
}

int wire_request_check(const embps_wire_request *rq, const embps_data_server_config *cfg, size_t *body)
{
    if (rq->magic != EMBPS_WIRE_MAGIC)
        return fail(EMBPS_E_PROTOCOL, "bad magic 0x%08x: not an embps data-path request", rq->magic);
    if (rq->op != EMBPS_WIRE_OP_LOOKUP && rq->op != EMBPS_WIRE_OP_UPDATE && rq->op != EMBPS_WIRE_OP_REFRESH)
        return fail(EMBPS_E_PROTOCOL, "unknown operation %u", rq->op);
    if (rq->name_len == 0 || rq->name_len > EMBPS_NAME_MAX)
        return fail(EMBPS_E_PROTOCOL, "table name length %u not in 1..%d", rq->name_len, EMBPS_NAME_MAX);
    if (rq->n_keys > cfg->max_batch_keys)
        return fail(EMBPS_E_TOO_LARGE, "batch of %u keys exceeds the limit of %u", rq->n_keys,
                    cfg->max_batch_keys);
    /* keys x dim < 2^64, but its bytes need not be: an overflow must not pass for a small body. */
    uint64_t fixed, per_key = body_bytes(rq, &fixed);
    uint64_t floats = rq->op == EMBPS_WIRE_OP_UPDATE ? (uint64_t)rq->n_keys * rq->dim : 0, bytes;
    if (__builtin_mul_overflow(floats, sizeof(float), &bytes) ||
        __builtin_add_overflow(bytes, rq->name_len + (uint64_t)rq->n_keys * per_key + fixed, &bytes))
        return fail(EMBPS_E_TOO_LARGE, "request of %u keys x dim %u exceeds the limit of %llu", rq->n_keys, rq->dim,
                    (unsigned long long)cfg->max_request_bytes);
    if (bytes > cfg->max_request_bytes)
        return fail(EMBPS_E_TOO_LARGE, "request of %llu bytes exceeds the limit of %llu", (unsigned long long)bytes,
                    (unsigned long long)cfg->max_request_bytes);
    *body = bytes;
    return EMBPS_OK;
}

/* The n parts of a request's bytes (their total is len) within the request's deadline; -1 when the
 * connection must close. */
static int recv_request(connection *c, struct iovec *iov, size_t n, size_t len, deadline *dl)
{
    if (!len || recv_iov(c->fd, iov, n, len, dl) >= 0)
        return 0;
    if (deadline_passed(dl))
        atomic_fetch_add(&c->server->connections_timed_out, 1);
    return -1;
}

/* A request's first bytes may take the idle timeout to come (the socket's SO_RCVTIMEO), the rest of
 * it the receive timeout. */
static int recv_header(connection *c, embps_wire_request *rq, deadline *dl)
{
    ssize_t got;
    do
        got = recv(c->fd, rq, sizeof(*rq), 0);
    while (got < 0 && errno == EINTR);
    if (got < 0 && would_block())
        atomic_fetch_add(&c->server->connections_timed_out, 1);   /* idle */
    if (got <= 0)
        return -1;
    struct iovec rest = {(char *)rq + got, sizeof(*rq) - (size_t)got};
    return recv_request(c, &rest, 1, rest.iov_len, dl);
}

/* Answers a request received whole; returns the status sent, or -1 if the connection broke. */
static int answer(connection *c, const embps_wire_request *rq, const char *name, const uint64_t *keys,
                  const float *grads)
{
    embps_data_server *d = c->server;
    embps_table *t;
    int rc = table_name_check(name, rq->name_len);   /* a NUL inside must not name a shorter table */
    if (rc || (rc = embps_table_acquire(d->store, name, &t)))
        return send_error(c, rc);
    embps_table_spec spec;
    embps_table_describe(t, &spec, NULL);
    int sent;
    if (rq->dim != spec.dim && (rq->op == EMBPS_WIRE_OP_UPDATE || rq->dim != 0))
        sent = send_error(c, fail(EMBPS_E_INVALID_ARGUMENT, "table '%s' has dim %u, the request says %u", name,
                                  spec.dim, rq->dim));
    else if (rq->op == EMBPS_WIRE_OP_LOOKUP)
        sent = lookup(c, t, &spec, keys, rq->n_keys, rq->flags & EMBPS_WIRE_WITH_STATE);
    else if (rq->op == EMBPS_WIRE_OP_REFRESH)
        sent = refresh(c, t, &spec, keys, rq->n_keys, rq->flags & EMBPS_WIRE_WITH_STATE);
    else
        sent = update(c, t, keys, rq->n_keys, grads, rq->dim, rq->flags & EMBPS_WIRE_WITH_COUNTS);
    embps_table_release(d->store, t);
    return sent;
}

/* The counters of an operation, NULL for an unknown one. */
static op_counters *op_counters_of(embps_data_server *d, uint8_t op)
{
    return op == EMBPS_WIRE_OP_LOOKUP ? &d->lookup : op == EMBPS_WIRE_OP_UPDATE ? &d->update
           : op == EMBPS_WIRE_OP_REFRESH ? &d->refresh : NULL;
}

/* One request; returns -1 when the connection must close. */
static int serve_one(connection *c)
{
    embps_data_server *d = c->server;
    deadline dl = {.timeout_ms = d->cfg.receive_timeout_ms};
    embps_wire_request rq;
    if (recv_header(c, &rq, &dl))
        return -1;
    uint64_t start = now_ns();
    size_t body = 0;
    int rc = wire_request_check(&rq, &d->cfg, &body);
    if (rc) {
        if (op_counters_of(d, rq.op))
            count(op_counters_of(d, rq.op), 0, start, 1);
        send_error(c, rc);
        return -1;   /* the body's size is unknown or too large to skip */
    }
    /* Layout: keys (kept 8-byte aligned at the start), gradients, then the name and its NUL. */
    const size_t data_bytes = body - rq.name_len;
    if (grow(&c->in, &c->in_cap, data_bytes + EMBPS_NAME_MAX + 1) || reserve_batch(c, rq.n_keys)) {
        send_error(c, fail(EMBPS_E_NOMEM, "out of memory for a request of %zu bytes", body));
        return -1;
    }
    uint64_t *keys = c->in;
    char *name = (char *)c->in + data_bytes;
    struct iovec parts[2] = {{name, rq.name_len}, {keys, data_bytes}};   /* one recvmsg, as a rule */
    if (recv_request(c, parts, 2, body, &dl))
        return -1;
    name[rq.name_len] = '\0';
    atomic_fetch_add(&d->bytes_in, sizeof(rq) + body);
    int sent = answer(c, &rq, name, keys, (const float *)(keys + rq.n_keys));
    count(op_counters_of(d, rq.op), rq.n_keys, start, sent != EMBPS_OK);
    return sent < 0 ? -1 : 0;
}

static void *connection_main(void *arg)
{
    connection *c = arg;
    while (serve_one(c) == 0)
        ;
    if (c->cut) {
        /* Connecting to AF_UNSPEC resets the connection: the kernel drops the reply bytes it still
         * holds for a client that does not read them, instead of keeping them until it does. */
        struct sockaddr reset = {.sa_family = AF_UNSPEC};
        connect(c->fd, &reset, sizeof(reset));
    } else {
        shutdown(c->fd, SHUT_RDWR);
    }
    atomic_fetch_sub(&c->server->connections_open, 1);
    atomic_store(&c->finished, 1);
    return NULL;
}

/* ---- connections and the acceptor ---------------------------------------- */

static void connection_free(connection *c)
{
    pthread_join(c->thread, NULL);
    close(c->fd);
    free(c->in);
    free(c->sge);
    free(c->iov);
    free(c->found);
    free(c->missing);
    free(c->stale);
    free(c->copied);
    free(c);
}

/* Joins the threads of closed connections; returns how many stay open. */
static size_t reap_finished(embps_data_server *d)
{
    size_t open = 0;
    pthread_mutex_lock(&d->lock);
    for (connection **p = &d->conns; *p;) {
        connection *c = *p;
        if (atomic_load(&c->finished)) {
            *p = c->next;
            connection_free(c);
        } else {
            open++;
            p = &c->next;
        }
    }
    pthread_mutex_unlock(&d->lock);
    return open;
}

/* Waiting for a request's first byte is a blocking recv bounded by SO_RCVTIMEO, the idle timeout;
 * every other wait polls until its exchange's deadline. */
static void configure_socket(const embps_data_server *d, int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct timeval tv = {.tv_sec = d->cfg.idle_timeout_ms / 1000, .tv_usec = d->cfg.idle_timeout_ms % 1000 * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/* A client beyond max_connections is told why before the connection closes. */
static void refuse(embps_data_server *d, int fd)
{
    embps_wire_reply reply;
    struct iovec iov[2];
    error_reply(fail(EMBPS_E_TOO_LARGE, "too many connections: the data server serves at most %u",
                     d->cfg.max_connections), &reply, iov);
    deadline now = {.timeout_ms = 0};   /* never waits: a new connection's send buffer has room */
    send_iov(fd, iov, 2, &now);
    atomic_fetch_add(&d->connections_refused, 1);
    close(fd);
}

static void accept_one(embps_data_server *d)
{
    int fd = accept4(d->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    if (reap_finished(d) >= d->cfg.max_connections) {
        refuse(d, fd);
        return;
    }
    configure_socket(d, fd);
    connection *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return;
    }
    c->server = d;
    c->fd = fd;
    atomic_fetch_add(&d->connections_open, 1);
    if (pthread_create(&c->thread, NULL, connection_main, c)) {
        atomic_fetch_sub(&d->connections_open, 1);
        close(fd);
        free(c);
        return;
    }
    atomic_fetch_add(&d->connections_total, 1);
    pthread_mutex_lock(&d->lock);
    c->next = d->conns;
    d->conns = c;
    pthread_mutex_unlock(&d->lock);
}

static void *acceptor_main(void *arg)
{
    embps_data_server *d = arg;
    struct pollfd fds[2] = {{.fd = d->listen_fd, .events = POLLIN}, {.fd = d->wake_pipe[0], .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0 && errno != EINTR)
            break;
        if (fds[1].revents)
            break;   /* stop requested */
        if (fds[0].revents & POLLIN)
            accept_one(d);
    }
    return NULL;
}

static int listen_on(embps_data_server *d)
{
    char port[8];
    snprintf(port, sizeof(port), "%u", d->cfg.port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res;
    int gai = getaddrinfo(d->cfg.host, port, &hints, &res);
    if (gai)
        return fail(EMBPS_E_INVALID_ARGUMENT, "cannot resolve %s: %s", d->cfg.host, gai_strerror(gai));
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    int rc = EMBPS_OK;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
        bind(fd, res->ai_addr, res->ai_addrlen) || listen(fd, 64))
        rc = fail(EMBPS_E_IO, "cannot listen on %s:%s: %s", d->cfg.host, port, strerror(errno));
    freeaddrinfo(res);
    struct sockaddr_storage addr;
    socklen_t len = sizeof(addr);
    if (!rc && getsockname(fd, (struct sockaddr *)&addr, &len))
        rc = fail(EMBPS_E_IO, "getsockname: %s", strerror(errno));
    if (rc) {
        if (fd >= 0)
            close(fd);
        return rc;
    }
    d->listen_fd = fd;
    d->port = ntohs(addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&addr)->sin6_port
                                               : ((struct sockaddr_in *)&addr)->sin_port);
    return EMBPS_OK;
}

int embps_data_server_start(embps_store *s, const embps_data_server_config *cfg, embps_data_server **out)
{
    if (!cfg || !cfg->host || !cfg->max_batch_keys || !cfg->max_request_bytes || !cfg->max_connections ||
        !cfg->send_timeout_ms || !cfg->receive_timeout_ms || !cfg->idle_timeout_ms)
        return fail(EMBPS_E_INVALID_ARGUMENT, "data server needs a host and non-zero limits and timeouts");
    if (cfg->send_timeout_ms >= EMBPS_WRITE_WAIT_MS)
        return fail(EMBPS_E_INVALID_ARGUMENT, "send timeout of %u ms: it must be below %u ms, the longest a "
                    "write waits for the rows a reply is sent from", cfg->send_timeout_ms, EMBPS_WRITE_WAIT_MS);
    embps_data_server *d = calloc(1, sizeof(*d));
    if (!d)
        return fail(EMBPS_E_NOMEM, "out of memory starting the data server");
    d->store = s;
    d->cfg = *cfg;
    d->listen_fd = d->wake_pipe[0] = d->wake_pipe[1] = -1;
    pthread_mutex_init(&d->lock, NULL);
    int rc = listen_on(d);
    if (!rc && pipe2(d->wake_pipe, O_CLOEXEC))
        rc = fail(EMBPS_E_IO, "pipe: %s", strerror(errno));
    if (!rc && pthread_create(&d->acceptor, NULL, acceptor_main, d))
        rc = fail(EMBPS_E_NOMEM, "cannot start the acceptor thread");
    if (rc) {
        if (d->listen_fd >= 0)
            close(d->listen_fd);
        if (d->wake_pipe[0] >= 0) {
            close(d->wake_pipe[0]);
            close(d->wake_pipe[1]);
        }
        free(d);
        return rc;
    }
    d->cfg.host = NULL;   /* the caller's string need not outlive this call */
    *out = d;
    return EMBPS_OK;
}

uint16_t embps_data_server_port(const embps_data_server *d)
{
    return d->port;
}

static void read_op(const op_counters *op, embps_data_server_op_stats *out)
{
    out->requests = atomic_load(&op->requests);
    out->errors = atomic_load(&op->errors);
    out->keys = atomic_load(&op->keys);
    out->latency_sum_ns = atomic_load(&op->latency_sum_ns);
    for (size_t b = 0; b < EMBPS_LATENCY_BUCKETS; b++)
        out->latency_buckets[b] = atomic_load(&op->latency_buckets[b]);
}

void embps_data_server_stats_get(embps_data_server *d, embps_data_server_stats *out)
{
    read_op(&d->lookup, &out->lookup);
    read_op(&d->update, &out->update);
    read_op(&d->refresh, &out->refresh);
    out->connections_total = atomic_load(&d->connections_total);
    out->connections_open = atomic_load(&d->connections_open);
    out->connections_refused = atomic_load(&d->connections_refused);
    out->connections_timed_out = atomic_load(&d->connections_timed_out);
    out->bytes_in = atomic_load(&d->bytes_in);
    out->bytes_out = atomic_load(&d->bytes_out);
}

void embps_data_server_stop(embps_data_server *d)
{
    if (!d)
        return;
    if (write(d->wake_pipe[1], "x", 1) < 0) {
        /* the pipe cannot be full: one byte, written once */
    }
    pthread_join(d->acceptor, NULL);
    close(d->listen_fd);
    pthread_mutex_lock(&d->lock);
    for (connection *c = d->conns; c; c = c->next)
        shutdown(c->fd, SHUT_RDWR);   /* wakes its recv; the thread then finishes */
    pthread_mutex_unlock(&d->lock);
    while (d->conns) {
        connection *c = d->conns;
        d->conns = c->next;
        connection_free(c);
    }
    close(d->wake_pipe[0]);
    close(d->wake_pipe[1]);
    pthread_mutex_destroy(&d->lock);
    free(d);
}
