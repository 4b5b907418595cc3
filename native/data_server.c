/* data_server.c -- the native TCP data path: batched lookups and updates answered in C.
 *
 * One thread per connection.  Lookup replies go out with sendmsg straight from the rows in the
 * pool, pinned by the gather guard until the kernel has copied them (the software twin of NIC
 * gathering). */
#include "embps_data_server.h"
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
    struct connection *next;
    /* Per-connection buffers, grown to the largest request seen. */
    void *in;
    size_t in_cap;
    embps_sge *sge;
    struct iovec *iov;
    uint8_t *found;
    float *missing;
    size_t batch_cap, missing_cap;
} connection;

struct embps_data_server {
    embps_store *store;
    embps_data_server_config cfg;
    int listen_fd, wake_pipe[2];
    uint16_t port;
    pthread_t acceptor;
    pthread_mutex_t lock;       /* guards conns */
    connection *conns;
    op_counters lookup, update;
    _Atomic uint64_t connections_total, connections_open, bytes_in, bytes_out;
};

/* ---- socket helpers ------------------------------------------------------ */

static int read_full(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len) {
        ssize_t got = recv(fd, p, len, 0);
        if (got == 0)
            return -1;
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += got;
        len -= (size_t)got;
    }
    return 0;
}

/* Sends every byte described by iov (which it consumes), at most IOV_MAX entries per call. */
static int send_iov(int fd, struct iovec *iov, size_t n)
{
    while (n) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = n < IOV_MAX ? n : IOV_MAX};
        ssize_t sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        while (n && (size_t)sent >= iov->iov_len) {
            sent -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n) {
            iov->iov_base = (char *)iov->iov_base + sent;
            iov->iov_len -= (size_t)sent;
        }
    }
    return 0;
}

/* Returns status once sent, or -1 if the connection broke. */
static int send_error(connection *c, int status)
{
    const char *msg = embps_errormsg();
    embps_wire_reply reply = {.status = (uint32_t)status, .msg_len = (uint32_t)strlen(msg)};
    struct iovec iov[2] = {{&reply, sizeof(reply)}, {(void *)msg, reply.msg_len}};
    atomic_fetch_add(&c->server->bytes_out, sizeof(reply) + reply.msg_len);
    return send_iov(c->fd, iov, 2) ? -1 : status;
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

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

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

/* Answers with one iovec per run of adjacent rows, pointing into the pool.  Like every operation,
 * returns the status sent, or -1 if the connection broke. */
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
    int sent = send_iov(c->fd, c->iov, k);
    embps_table_gather_end(t, guard);   /* sendmsg returned: the kernel holds its own copy */
    atomic_fetch_add(&c->server->bytes_out, sizeof(reply) + reply.payload_bytes);
    return sent ? -1 : EMBPS_OK;
}

static int update(connection *c, embps_table *t, const uint64_t *keys, size_t n, const float *grads, uint32_t dim)
{
    int rc = embps_table_update(t, keys, n, grads, (size_t)n * dim);
    if (rc)
        return send_error(c, rc);
    embps_wire_reply reply = {.status = EMBPS_OK};
    struct iovec iov = {&reply, sizeof(reply)};
    atomic_fetch_add(&c->server->bytes_out, sizeof(reply));
    return send_iov(c->fd, &iov, 1) ? -1 : EMBPS_OK;   /* which resumes a send a signal interrupts */
}

int wire_request_check(const embps_wire_request *rq, const embps_data_server_config *cfg, size_t *body)
{
    if (rq->magic != EMBPS_WIRE_MAGIC)
        return fail(EMBPS_E_PROTOCOL, "bad magic 0x%08x: not an embps data-path request", rq->magic);
    if (rq->op != EMBPS_WIRE_OP_LOOKUP && rq->op != EMBPS_WIRE_OP_UPDATE)
        return fail(EMBPS_E_PROTOCOL, "unknown operation %u", rq->op);
    if (rq->name_len == 0 || rq->name_len > EMBPS_NAME_MAX)
        return fail(EMBPS_E_PROTOCOL, "table name length %u not in 1..%d", rq->name_len, EMBPS_NAME_MAX);
    if (rq->n_keys > cfg->max_batch_keys)
        return fail(EMBPS_E_TOO_LARGE, "batch of %u keys exceeds the limit of %u", rq->n_keys,
                    cfg->max_batch_keys);
    /* keys x dim < 2^64, but its bytes need not be: an overflow must not pass for a small body. */
    uint64_t floats = rq->op == EMBPS_WIRE_OP_UPDATE ? (uint64_t)rq->n_keys * rq->dim : 0, bytes;
    if (__builtin_mul_overflow(floats, sizeof(float), &bytes) ||
        __builtin_add_overflow(bytes, rq->name_len + (uint64_t)rq->n_keys * 8, &bytes))
        return fail(EMBPS_E_TOO_LARGE, "request of %u keys x dim %u exceeds the limit of %llu", rq->n_keys, rq->dim,
                    (unsigned long long)cfg->max_request_bytes);
    if (bytes > cfg->max_request_bytes)
        return fail(EMBPS_E_TOO_LARGE, "request of %llu bytes exceeds the limit of %llu", (unsigned long long)bytes,
                    (unsigned long long)cfg->max_request_bytes);
    *body = bytes;
    return EMBPS_OK;
}

/* One request; returns -1 when the connection must close. */
static int serve_one(connection *c)
{
    embps_data_server *d = c->server;
    embps_wire_request rq;
    if (read_full(c->fd, &rq, sizeof(rq)))
        return -1;
    uint64_t start = now_ns();
    size_t body = 0;
    int rc = wire_request_check(&rq, &d->cfg, &body);
    if (rc) {
        if (rq.op == EMBPS_WIRE_OP_LOOKUP || rq.op == EMBPS_WIRE_OP_UPDATE)
            count(rq.op == EMBPS_WIRE_OP_LOOKUP ? &d->lookup : &d->update, 0, start, 1);
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
    float *grads = (float *)(keys + rq.n_keys);
    char *name = (char *)c->in + data_bytes;
    if (read_full(c->fd, name, rq.name_len) || read_full(c->fd, keys, data_bytes))
        return -1;
    name[rq.name_len] = '\0';
    atomic_fetch_add(&d->bytes_in, sizeof(rq) + body);

    op_counters *op = rq.op == EMBPS_WIRE_OP_LOOKUP ? &d->lookup : &d->update;
    embps_table *t;
    int sent;
    if ((rc = embps_table_acquire(d->store, name, &t))) {
        sent = send_error(c, rc);
    } else {
        embps_table_spec spec;
        embps_table_describe(t, &spec, NULL);
        if (rq.dim != spec.dim && (rq.op == EMBPS_WIRE_OP_UPDATE || rq.dim != 0))
            sent = send_error(c, fail(EMBPS_E_INVALID_ARGUMENT, "table '%s' has dim %u, the request says %u", name,
                                      spec.dim, rq.dim));
        else if (rq.op == EMBPS_WIRE_OP_LOOKUP)
            sent = lookup(c, t, &spec, keys, rq.n_keys, rq.flags & EMBPS_WIRE_WITH_STATE);
        else
            sent = update(c, t, keys, rq.n_keys, grads, rq.dim);
        embps_table_release(d->store);
    }
    count(op, rq.n_keys, start, sent != EMBPS_OK);
    return sent < 0 ? -1 : 0;
}

static void *connection_main(void *arg)
{
    connection *c = arg;
    while (serve_one(c) == 0)
        ;
    shutdown(c->fd, SHUT_RDWR);
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

static void configure_socket(const embps_data_server *d, int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct timeval tv = {.tv_sec = d->cfg.send_timeout_ms / 1000, .tv_usec = d->cfg.send_timeout_ms % 1000 * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static void accept_one(embps_data_server *d)
{
    int fd = accept4(d->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    if (reap_finished(d) >= d->cfg.max_connections) {
        close(fd);
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
    if (!cfg || !cfg->host || !cfg->max_batch_keys || !cfg->max_request_bytes || !cfg->max_connections)
        return fail(EMBPS_E_INVALID_ARGUMENT, "data server needs a host and non-zero limits");
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
    out->connections_total = atomic_load(&d->connections_total);
    out->connections_open = atomic_load(&d->connections_open);
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
