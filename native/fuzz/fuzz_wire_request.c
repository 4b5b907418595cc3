/* fuzz_wire_request.c -- libFuzzer harness of the TCP data path's request parsing.
 *
 * An input is what a client sends on one connection: request frames back to back.  Each header
 * goes through wire_request_check under three sets of limits (this harness's server, the shard's
 * defaults, the widest an operator can set) and must be accepted exactly when an independent
 * computation says so.  Then the whole input goes to a live data server, over loopback, on a
 * store in a temp directory: it must answer every complete frame it accepted with a well-formed
 * reply (success only for a table that exists under exactly the name sent, and a dim that fits
 * it), answer a refused header with its status, and keep serving the next connection. */
#include "embps_data_server.h"
#include "scratch_dir.h"
#include "wire_request.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define REQUIRE(cond, ...)                                                           \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_wire_request: " __VA_ARGS__);                      \
            fprintf(stderr, " (%s; last error: %s)\n", #cond, embps_errormsg());     \
            abort();                                                                 \
        }                                                                            \
    } while (0)

/* The server's limits are small, so that fuzzed frames reach them. */
static const embps_data_server_config server_cfg = {
    .host = "127.0.0.1", .max_batch_keys = 256, .max_request_bytes = 1u << 16, .max_connections = 256,
    .send_timeout_ms = 10000, .receive_timeout_ms = 10000, .idle_timeout_ms = 60000};
static const embps_data_server_config shard_defaults = {.max_batch_keys = 65536, .max_request_bytes = 64u << 20};
static const embps_data_server_config widest = {.max_batch_keys = UINT32_MAX, .max_request_bytes = UINT64_MAX};

static char dir[64];
static embps_store *store;
static embps_data_server *server;

typedef struct {
    const char *name;
    embps_table_spec spec;
} served_table;

static const served_table tables[] = {
    {"t", {.dim = 4, .capacity = 512, .optimizer = EMBPS_OPT_SGD, .lr = 0.1, .init = EMBPS_INIT_UNIFORM,
           .init_scale = 0.05}},
    {"a", {.dim = 3, .capacity = 64, .optimizer = EMBPS_OPT_ADAM, .lr = 0.01, .eps = 1e-8, .beta1 = 0.9,
           .beta2 = 0.999, .missing = EMBPS_MISSING_REPORT}},
};
#define N_TABLES (sizeof(tables) / sizeof(tables[0]))

/* ---- the parser against an independent computation ----------------------- */

static int header_is_acceptable(const embps_wire_request *rq, const embps_data_server_config *cfg,
                                unsigned __int128 *body)
{
    *body = rq->name_len + (unsigned __int128)rq->n_keys * 8;
    if (rq->op == EMBPS_WIRE_OP_UPDATE)
        *body += (unsigned __int128)rq->n_keys * (rq->dim * sizeof(float) + (rq->flags & EMBPS_WIRE_WITH_COUNTS ? 4 : 0));
    if (rq->op == EMBPS_WIRE_OP_REFRESH)   /* versions held, then the bound */
        *body += (unsigned __int128)rq->n_keys * 8 + 8;
    return rq->magic == EMBPS_WIRE_MAGIC &&
           (rq->op == EMBPS_WIRE_OP_LOOKUP || rq->op == EMBPS_WIRE_OP_UPDATE || rq->op == EMBPS_WIRE_OP_REFRESH) &&
           rq->name_len >= 1 && rq->name_len <= EMBPS_NAME_MAX && rq->n_keys <= cfg->max_batch_keys &&
           *body <= cfg->max_request_bytes;
}

static int check_header(const uint8_t *frame, const embps_data_server_config *cfg, embps_wire_request *rq,
                        size_t *body)
{
    memcpy(rq, frame, sizeof(*rq));   /* the wire structs are sent as they are in memory */
    int rc = wire_request_check(rq, cfg, body);
    unsigned __int128 want;
    int acceptable = header_is_acceptable(rq, cfg, &want);
    REQUIRE(acceptable == (rc == EMBPS_OK), "header op %u name_len %u n_keys %u dim %u under limits %u keys, "
            "%llu bytes: status %d", rq->op, rq->name_len, rq->n_keys, rq->dim, cfg->max_batch_keys,
            (unsigned long long)cfg->max_request_bytes, rc);
    if (rc == EMBPS_OK)
        REQUIRE(*body == want, "body of %zu bytes, should be %llu", *body, (unsigned long long)want);
    else
        REQUIRE((rc == EMBPS_E_PROTOCOL || rc == EMBPS_E_TOO_LARGE) && embps_errormsg()[0],
                "refused with status %d", rc);
    return rc;
}

typedef struct {
    embps_wire_request rq;
    const char *name;
} frame;

/* Walks the frames as the server reads them; returns how many are complete and accepted, and in
 * *refused the status the server must answer the header after them with (0: none). */
static size_t walk_frames(const uint8_t *data, size_t size, frame *out, int *refused)
{
    size_t n = 0, pos = 0, body;
    *refused = 0;
    while (size - pos >= sizeof(embps_wire_request)) {
        embps_wire_request rq;
        check_header(data + pos, &shard_defaults, &rq, &body);
        check_header(data + pos, &widest, &rq, &body);
        if ((*refused = check_header(data + pos, &server_cfg, &rq, &body)))
            break;
        if (body > size - pos - sizeof(rq))
            break;   /* the server waits for the rest, until the connection closes */
        out[n++] = (frame){rq, (const char *)data + pos + sizeof(rq)};
        pos += sizeof(rq) + body;
    }
    return n;
}

/* ---- the live server ----------------------------------------------------- */

static void remove_dir(void)
{
    embps_data_server_stop(server);
    embps_store_close(store);
    scratch_dir_remove(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("PMEM2_FORCE_GRANULARITY", "CACHE_LINE", 0);   /* files in tmpfs are not PM */
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof(dir), "%s/embps-fuzz-wire-XXXXXX", base);
    REQUIRE(mkdtemp(dir), "cannot create a temp directory in %s", base);
    embps_store_config cfg = {.dir = dir};
    REQUIRE(embps_store_open(&cfg, &store) == EMBPS_OK, "cannot open a store in %s", dir);
    for (size_t i = 0; i < N_TABLES; i++) {
        embps_table *t;
        REQUIRE(embps_table_create(store, tables[i].name, &tables[i].spec, &t) == EMBPS_OK, "cannot create %s",
                tables[i].name);
    }
    REQUIRE(embps_data_server_start(store, &server_cfg, &server) == EMBPS_OK, "cannot start the data server");
    atexit(remove_dir);
    return 0;
}

static int connect_to_server(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), err = 0;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(embps_data_server_port(server))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof(addr)) && (err = errno) == EINTR) {
        struct pollfd done = {.fd = fd, .events = POLLOUT};   /* an interrupted connect goes on */
        socklen_t len = sizeof(err);
        while (poll(&done, 1, -1) < 0 && errno == EINTR)
            ;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    }
    REQUIRE(fd >= 0 && !err, "cannot connect: %s", strerror(err));
    struct timeval tv = {.tv_sec = 60};   /* a reply that never comes fails the run, not hangs it */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

/* Closing with a reset leaves no TIME_WAIT behind: a run makes many thousand connections. */
static void close_with_reset(int fd)
{
    struct linger reset = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
    close(fd);
}

/* libFuzzer's timer signals interrupt blocking calls: they are retried. */
static int recv_full(int fd, void *buf, size_t len)
{
    for (char *p = buf; len;) {
        ssize_t got = recv(fd, p, len, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -1;
        p += got;
        len -= (size_t)got;
    }
    return 0;
}

static const served_table *table_named(const char *name, size_t len)
{
    for (size_t i = 0; i < N_TABLES; i++)
        if (strlen(tables[i].name) == len && memcmp(tables[i].name, name, len) == 0)
            return &tables[i];
    return NULL;
}

/* Reads one reply and checks it against its request (f NULL: the answer to a refused header). */
static int check_reply(int fd, const frame *f, int refused)
{
    embps_wire_reply reply;
    if (recv_full(fd, &reply, sizeof(reply))) {
        embps_data_server_stats stats;
        embps_data_server_stats_get(server, &stats);
        REQUIRE(0, "no reply to request %u (%s; %llu of %llu connections open)", f ? f->rq.op : 0, strerror(errno),
                (unsigned long long)stats.connections_open, (unsigned long long)stats.connections_total);
    }
    REQUIRE(strcmp(embps_status_name((int)reply.status), "UNKNOWN") != 0, "reply status %u", reply.status);
    if (!f)
        REQUIRE((int)reply.status == refused, "a refused header answered with %u, not %d", reply.status, refused);
    if (reply.status != EMBPS_OK) {
        char msg[1024];
        REQUIRE(reply.msg_len >= 1 && reply.msg_len < sizeof(msg) && reply.payload_bytes == 0,
                "error reply with a message of %u bytes and %llu payload bytes", reply.msg_len,
                (unsigned long long)reply.payload_bytes);
        REQUIRE(recv_full(fd, msg, reply.msg_len) == 0, "error reply cut short");
        return (int)reply.status;
    }
    const served_table *t = table_named(f->name, f->rq.name_len);
    REQUIRE(t, "success for table '%.*s' (a name of %u bytes), which does not exist", (int)f->rq.name_len, f->name,
            f->rq.name_len);
    REQUIRE(f->rq.dim == t->spec.dim || (f->rq.op != EMBPS_WIRE_OP_UPDATE && f->rq.dim == 0),
            "success for dim %u on table %s of dim %u", f->rq.dim, t->name, t->spec.dim);
    REQUIRE(reply.msg_len == 0, "success with a message");
    uint64_t want = 0, width = t->spec.dim, stale = 0;
    if (f->rq.flags & EMBPS_WIRE_WITH_STATE)
        width += embps_optimizer_state_floats(t->spec.optimizer, t->spec.dim);
    if (f->rq.op == EMBPS_WIRE_OP_LOOKUP)
        want = f->rq.n_keys * (width * sizeof(float) + 1);
    if (f->rq.op == EMBPS_WIRE_OP_REFRESH) {   /* its size follows from the count it starts with */
        REQUIRE(reply.payload_bytes >= 8 && recv_full(fd, &stale, 8) == 0, "refresh reply without its count");
        REQUIRE(stale <= f->rq.n_keys, "a refresh of %u keys answers %llu rows", f->rq.n_keys,
                (unsigned long long)stale);
        want = 8 + stale * (12 + width * sizeof(float));
    }
    REQUIRE(reply.payload_bytes == want, "payload of %llu bytes, should be %llu",
            (unsigned long long)reply.payload_bytes, (unsigned long long)want);
    if (f->rq.op == EMBPS_WIRE_OP_REFRESH)
        want -= 8;   /* the count, read */
    uint8_t *payload = malloc(want + 1);
    REQUIRE(recv_full(fd, payload, want) == 0, "payload cut short");
    for (uint64_t i = 0; i < stale; i++) {   /* positions ascend within the request */
        uint32_t at, before = 0;
        memcpy(&at, payload + stale * 8 + i * 4, 4);
        if (i)
            memcpy(&before, payload + stale * 8 + (i - 1) * 4, 4);
        REQUIRE(at < f->rq.n_keys && (i == 0 || at > before), "refresh position %u of %u keys", at, f->rq.n_keys);
    }
    for (uint64_t i = 0; f->rq.op == EMBPS_WIRE_OP_LOOKUP && i < f->rq.n_keys; i++)
        REQUIRE(payload[want - f->rq.n_keys + i] <= 1, "found byte %u", payload[want - f->rq.n_keys + i]);
    free(payload);
    return EMBPS_OK;
}

/* Empties a table once it is half full, so that updates keep reaching new keys. */
static void keep_room(const served_table *st)
{
    embps_table *t;
    embps_table_stats stats;
    REQUIRE(embps_table_get(store, st->name, &t) == EMBPS_OK, "table %s is gone", st->name);
    embps_table_describe(t, NULL, &stats);
    REQUIRE(embps_table_check(t) == EMBPS_OK, "table %s fails its check", st->name);
    if (stats.rows <= st->spec.capacity / 2)
        return;
    enum { BATCH = 64 };
    uint64_t keys[BATCH], cursor = 0;
    float *rows = malloc(BATCH * st->spec.dim * sizeof(float));
    while (cursor != UINT64_MAX) {
        size_t n;
        REQUIRE(embps_table_export(t, &cursor, BATCH, keys, rows, NULL, &n) == EMBPS_OK, "export failed");
        REQUIRE(embps_table_delete(t, keys, n, NULL) == EMBPS_OK, "delete failed");
    }
    free(rows);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    frame *frames = malloc((size / sizeof(embps_wire_request) + 1) * sizeof(*frames));
    int refused;
    size_t n = walk_frames(data, size, frames, &refused);
    int fd = connect_to_server();
    for (size_t sent = 0; sent < size;) {
        ssize_t put = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
        if (put < 0 && errno == EINTR)
            continue;
        REQUIRE(put > 0, "cannot send the request bytes: %s", strerror(errno));
        sent += (size_t)put;
    }
    int closed = 0;
    for (size_t i = 0; i < n && !closed; i++)
        closed = check_reply(fd, &frames[i], 0) == EMBPS_E_NOMEM;   /* the server closes after NOMEM */
    if (refused && !closed)
        check_reply(fd, NULL, refused);
    close_with_reset(fd);
    free(frames);
    for (size_t i = 0; i < N_TABLES; i++)
        keep_room(&tables[i]);
    return 0;
}
