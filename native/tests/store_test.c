/*
 * store_test.c -- the native core's tests, built with AddressSanitizer and UBSan by `make test-native`.
 *
 * Python tests cover the numerics; these cover memory safety, invariants,
 * crash recovery and lock-free reads racing a writer.
 */
#include "embps_data_client.h"
#include "embps_data_server.h"
#include "embps_key_router.h"
#include "embps_store.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

static int failures;

#define EXPECT(cond)                                                                     \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: expected %s (last error: %s)\n", __FILE__, __LINE__, \
                    #cond, embps_errormsg());                                            \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

#define EXPECT_OK(call) EXPECT((call) == EMBPS_OK)

static char root[256];

static embps_store *open_store(const char *name, int sim, uint64_t crash_at, double evict)
{
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/%s", root, name);
    embps_store_config cfg = {.dir = dir, .crash_sim = sim, .crash_at = crash_at, .crash_evict_prob = evict,
                              .crash_seed = crash_at * 7919 + 1};
    embps_store *s = NULL;
    EXPECT_OK(embps_store_open(&cfg, &s));
    return s;
}

static embps_table_spec spec_of(uint32_t optimizer, uint32_t dim, uint64_t capacity)
{
    return (embps_table_spec){.dim = dim, .capacity = capacity, .optimizer = optimizer, .lr = 0.1f,
                              .eps = 1e-8f, .beta1 = 0.9f, .beta2 = 0.999f, .init = EMBPS_INIT_UNIFORM,
                              .init_scale = 0.05f, .init_seed = 42};
}

static void fill(float *v, size_t n, float x)
{
    for (size_t i = 0; i < n; i++)
        v[i] = x;
}

static void test_round_trip_and_reopen(void)
{
    enum { N = 5000, DIM = 8 };
    embps_store *s = open_store("round_trip", 0, 0, 0);
    embps_table_spec spec = spec_of(EMBPS_OPT_ADAGRAD, DIM, N);
    embps_table *t;
    EXPECT_OK(embps_table_create(s, "emb", &spec, &t));
    EXPECT(embps_table_create(s, "emb", &spec, &t) == EMBPS_E_EXISTS);
    static uint64_t keys[N];
    static float rows[N * DIM], out[N * DIM], state[N * DIM];
    static uint8_t found[N];
    for (size_t i = 0; i < N; i++) {
        keys[i] = i * 0x9E3779B97F4A7C15ull;
        fill(rows + i * DIM, DIM, (float)i);
    }
    EXPECT_OK(embps_table_assign(t, keys, N, rows, N * DIM, NULL, 0));
    EXPECT_OK(embps_table_lookup(t, keys, N, out, N * DIM, state, N * DIM, found));
    EXPECT(memcmp(rows, out, sizeof(rows)) == 0);
    EXPECT(found[0] && found[N - 1] && state[5] == 0.0f);
    /* a repeated key: its gradients are summed, then Adagrad runs once */
    uint64_t twice[2] = {keys[3], keys[3]};
    float g[2 * DIM];
    fill(g, 2 * DIM, 1.0f);
    EXPECT_OK(embps_table_update(t, twice, 2, g, 2 * DIM));
    EXPECT_OK(embps_table_lookup(t, twice, 1, out, DIM, state, DIM, found));
    EXPECT(state[0] == 4.0f && fabsf(out[0] - (3.0f - 0.1f * 2.0f / (2.0f + 1e-8f))) < 1e-6f);
    uint64_t deleted = 0;
    EXPECT_OK(embps_table_delete(t, keys, N / 2, &deleted));
    EXPECT(deleted == N / 2);
    EXPECT_OK(embps_table_check(t));
    embps_store_close(s);

    s = open_store("round_trip", 0, 0, 0);
    EXPECT_OK(embps_table_get(s, "emb", &t));
    EXPECT_OK(embps_table_check(t));
    embps_table_stats st;
    embps_table_describe(t, NULL, &st);
    EXPECT(st.rows == N - N / 2 && st.slabs_used == st.rows);
    EXPECT_OK(embps_table_lookup(t, keys, N, out, N * DIM, NULL, 0, found));
    EXPECT(!found[0] && found[N / 2] && out[(N - 1) * DIM] == (float)(N - 1));
    uint64_t cursor = 0, seen = 0;
    while (cursor != UINT64_MAX) {
        size_t n;
        EXPECT_OK(embps_table_export(t, &cursor, 64, keys, out, state, &n));
        seen += n;
    }
    EXPECT(seen == st.rows);
    EXPECT_OK(embps_table_drop(s, "emb"));
    EXPECT(embps_table_get(s, "emb", &t) == EMBPS_E_NOT_FOUND);
    embps_store_close(s);
}

static void test_bad_input_changes_nothing(void)
{
    embps_store *s = open_store("bad_input", 0, 0, 0);
    embps_table_spec spec = spec_of(EMBPS_OPT_SGD, 4, 10);
    embps_table *t;
    EXPECT(embps_table_create(s, "../escape", &spec, &t) == EMBPS_E_INVALID_ARGUMENT);
    embps_table_spec bad = spec;
    bad.dim = 0;
    EXPECT(embps_table_create(s, "t", &bad, &t) == EMBPS_E_INVALID_ARGUMENT);
    EXPECT_OK(embps_table_create(s, "t", &spec, &t));
    uint64_t keys[12];
    float rows[12 * 4];
    for (int i = 0; i < 12; i++)
        keys[i] = (uint64_t)i;
    fill(rows, 48, 1.0f);
    EXPECT_OK(embps_table_assign(t, keys, 5, rows, 20, NULL, 0));
    EXPECT(embps_table_assign(t, keys, 5, rows, 19, NULL, 0) == EMBPS_E_INVALID_ARGUMENT);
    EXPECT(embps_table_assign(t, keys, 12, rows, 48, NULL, 0) == EMBPS_E_CAPACITY);
    rows[7] = NAN;
    EXPECT(embps_table_update(t, keys, 5, rows, 20) == EMBPS_E_NONFINITE);
    rows[7] = INFINITY;
    EXPECT(embps_table_assign(t, keys, 5, rows, 20, NULL, 0) == EMBPS_E_NONFINITE);
    uint64_t reserved = EMBPS_RESERVED_KEY;
    EXPECT(embps_table_assign(t, &reserved, 1, rows, 4, NULL, 0) == EMBPS_E_INVALID_ARGUMENT);
    float out[20];
    EXPECT(embps_table_lookup(t, keys, 5, out, 21, NULL, 0, NULL) == EMBPS_E_INVALID_ARGUMENT);
    EXPECT_OK(embps_table_lookup(t, keys, 5, out, 20, NULL, 0, NULL));
    for (int i = 0; i < 20; i++)
        EXPECT(out[i] == 1.0f);
    embps_table_stats st;
    embps_table_describe(t, NULL, &st);
    EXPECT(st.rows == 5);
    EXPECT_OK(embps_table_check(t));
    EXPECT(embps_table_get(s, "missing", &t) == EMBPS_E_NOT_FOUND);
    embps_store_close(s);

    /* a file that is not a table refuses to open instead of being misread; the others are served */
    char path[512];
    snprintf(path, sizeof(path), "%s/bad_input/junk.table", root);
    FILE *f = fopen(path, "w");
    fputs("not a table", f);
    fclose(f);
    s = open_store("bad_input", 0, 0, 0);
    EXPECT(embps_table_get(s, "junk", &t) == EMBPS_E_CORRUPT && strstr(embps_errormsg(), "not an embps table"));
    EXPECT(embps_table_acquire(s, "junk", &t) == EMBPS_E_CORRUPT && !strstr(embps_errormsg(), root));
    EXPECT(embps_table_create(s, "junk", &spec, &t) == EMBPS_E_EXISTS);   /* its name stays taken */
    EXPECT_OK(embps_table_get(s, "t", &t));
    EXPECT_OK(embps_table_lookup(t, keys, 5, out, 20, NULL, 0, NULL));
    char names[2][EMBPS_NAME_MAX + 1];
    EXPECT_OK(embps_store_table_at(s, 0, names[0]));
    EXPECT_OK(embps_store_table_at(s, 1, names[1]));
    EXPECT(embps_store_table_at(s, 2, names[0]) == EMBPS_E_NOT_FOUND);
    EXPECT_OK(embps_table_drop(s, "junk"));   /* removes the file */
    EXPECT(access(path, F_OK) != 0);
    embps_store_close(s);
}

/* A create whose file cannot get its blocks fails with CAPACITY, and leaves no file behind. */
static void test_failed_create_leaves_nothing(void)
{
    embps_store *s = open_store("too_big", 0, 0, 0);
    embps_table_spec spec = spec_of(EMBPS_OPT_ADAM, 65536, 1ull << 36);   /* a 57 PB file */
    embps_table *t;
    EXPECT(embps_table_create(s, "big", &spec, &t) == EMBPS_E_CAPACITY);
    EXPECT(!strstr(embps_errormsg(), root));   /* messages reach clients: no server paths */
    char path[512];
    snprintf(path, sizeof(path), "%s/too_big/big.table", root);
    EXPECT(access(path, F_OK) != 0);
    snprintf(path, sizeof(path), "%s/too_big/big.creating", root);
    EXPECT(access(path, F_OK) != 0);
    EXPECT(embps_table_get(s, "big", &t) == EMBPS_E_NOT_FOUND);
    spec.capacity = 10;
    EXPECT_OK(embps_table_create(s, "big", &spec, &t));   /* the name was not kept */
    embps_store_close(s);
}

/* Every create, drop and call on one name racing each other: no use of a freed table (ASan), and
 * only the statuses some order of the calls gives. */
typedef struct {
    embps_store *s;
    _Atomic int stop, unexpected, created, dropped;
} churn;

static void *churn_create(void *arg)
{
    churn *c = arg;
    embps_table_spec spec = spec_of(EMBPS_OPT_ADAGRAD, 4, 100);
    for (int i = 0; i < 1000000 && c->created < 100; i++) {
        embps_table *t;
        int rc = embps_table_create(c->s, "pair", &spec, &t);
        c->created += rc == EMBPS_OK;
        c->unexpected += rc != EMBPS_OK && rc != EMBPS_E_EXISTS;
        if (rc)
            sched_yield();   /* let a drop in */
    }
    c->stop = 1;
    return NULL;
}

static void *churn_drop(void *arg)
{
    churn *c = arg;
    while (!c->stop) {
        int rc = embps_table_drop(c->s, "pair");
        c->dropped += rc == EMBPS_OK;
        c->unexpected += rc != EMBPS_OK && rc != EMBPS_E_NOT_FOUND;
    }
    return NULL;
}

static void *churn_use(void *arg)
{
    churn *c = arg;
    uint64_t keys[16] = {1, 2, 3, 4}, cursor;
    float grads[16], rows[16 * 4];
    fill(grads, 16, 0.5f);
    while (!c->stop) {
        embps_table *t;
        int rc = embps_table_acquire(c->s, "pair", &t);
        if (rc) {
            c->unexpected += rc != EMBPS_E_NOT_FOUND;
            continue;
        }
        embps_table_stats st;
        size_t n;
        c->unexpected += embps_table_update(t, keys, 4, grads, 16) != EMBPS_OK;
        c->unexpected += embps_table_lookup(t, keys, 4, rows, 16, NULL, 0, NULL) != EMBPS_OK;
        embps_table_describe(t, NULL, &st);
        cursor = 0;
        c->unexpected += embps_table_export(t, &cursor, 16, keys + 4, rows, rows + 4 * 4, &n) != EMBPS_OK;
        embps_table_release(c->s, t);
    }
    return NULL;
}

static void test_concurrent_create_and_drop(void)
{
    churn c = {.s = open_store("churn", 0, 0, 0)};
    pthread_t threads[5];
    void *(*roles[5])(void *) = {churn_create, churn_drop, churn_drop, churn_use, churn_use};
    for (int i = 0; i < 5; i++)
        pthread_create(&threads[i], NULL, roles[i], &c);
    for (int i = 0; i < 5; i++)
        pthread_join(threads[i], NULL);
    EXPECT(c.unexpected == 0);
    EXPECT(c.created == 100 && c.dropped >= 99);   /* the race was run */
    embps_store_close(c.s);
}

typedef struct {
    embps_store *s;
    const char *name;
    int rc;
} drop_call;

static void *drop_main(void *arg)
{
    drop_call *d = arg;
    d->rc = embps_table_drop(d->s, d->name);
    return NULL;
}

/* Bounded: a drop that never returns fails the test instead of hanging it. */
static int joined_within(pthread_t thread, int seconds)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += seconds;
    return pthread_timedjoin_np(thread, NULL, &deadline) == 0;
}

/* A held table keeps only its own drop waiting; that drop makes it unreachable at once. */
static void test_drop_waits_only_for_its_table(void)
{
    embps_store *s = open_store("per_table", 0, 0, 0);
    embps_table_spec spec = spec_of(EMBPS_OPT_SGD, 4, 10);
    embps_table *t, *held;
    EXPECT_OK(embps_table_create(s, "held", &spec, &t));
    EXPECT_OK(embps_table_create(s, "other", &spec, &t));
    EXPECT_OK(embps_table_acquire(s, "held", &held));
    drop_call other = {s, "other", -1}, own = {s, "held", -1};
    pthread_t thread;
    pthread_create(&thread, NULL, drop_main, &other);
    int other_returned = joined_within(thread, 60);
    EXPECT(other_returned && other.rc == EMBPS_OK);
    if (!other_returned) {   /* the rest would wait behind it */
        embps_table_release(s, held);
        pthread_join(thread, NULL);
        embps_store_close(s);
        return;
    }
    pthread_create(&thread, NULL, drop_main, &own);
    for (int i = 0; i < 60000 && embps_table_acquire(s, "held", &t) == EMBPS_OK; i++) {
        embps_table_release(s, t);
        usleep(1000);
    }
    EXPECT(embps_table_get(s, "held", &t) == EMBPS_E_NOT_FOUND);
    EXPECT(own.rc == -1);   /* still waiting for the reference */
    uint64_t key = 1;
    float row[4];
    EXPECT_OK(embps_table_lookup(held, &key, 1, row, 4, NULL, 0, NULL));   /* the handle is still valid */
    EXPECT(embps_table_create(s, "held", &spec, &t) == EMBPS_E_EXISTS);   /* until its file is gone */
    embps_table_release(s, held);
    EXPECT(joined_within(thread, 60) && own.rc == EMBPS_OK);
    EXPECT_OK(embps_table_create(s, "held", &spec, &t));
    embps_store_close(s);
}

static void test_store_creates_parent_directories(void)
{
    embps_store *s = open_store("parents/of/a/store", 0, 0, 0);
    EXPECT(s != NULL);
    embps_store_close(s);
    char file[512], dir[600];
    snprintf(file, sizeof(file), "%s/a_file", root);
    fclose(fopen(file, "w"));
    snprintf(dir, sizeof(dir), "%s/store", file);
    embps_store_config cfg = {.dir = dir};
    EXPECT(embps_store_open(&cfg, &s) == EMBPS_E_IO);   /* a parent that is a file */
}

/* A table file copied under another name holds the first table's name: opening it as a second table
 * of that name would let a drop of one unlink the other's file. */
static void test_store_refuses_a_table_file_under_another_name(void)
{
    embps_store *s = open_store("copied", 0, 0, 0);
    embps_table_spec spec = spec_of(EMBPS_OPT_SGD, 4, 100);
    embps_table *t;
    EXPECT_OK(embps_table_create(s, "orig", &spec, &t));
    embps_store_close(s);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "cp %s/copied/orig.table %s/copied/copy.table", root, root);
    EXPECT(system(cmd) == 0);
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/copied", root);
    embps_store_config cfg = {.dir = dir};
    s = NULL;
    int rc = embps_store_open(&cfg, &s);   /* refused, or opened with the copy refused */
    if (rc == EMBPS_OK)
        rc = embps_table_get(s, "copy", &t);
    EXPECT(rc == EMBPS_E_CORRUPT && strstr(embps_errormsg(), "copy.table holds table 'orig'"));
    if (s) {   /* and one table named orig, not two */
        EXPECT_OK(embps_table_drop(s, "orig"));
        EXPECT(embps_table_get(s, "orig", &t) == EMBPS_E_NOT_FOUND);
        embps_store_close(s);
    }
}

/* Recovery of a table whose index was tampered with, slot by slot, in a copy of its index in memory.
 * The table has enough buckets to be recovered by two threads where there are two cores: the tampering
 * pairs a slot of the first half of the buckets with one of the second. */
#define INDEX_OFFSET 4096   /* table.c: the index of 256-byte buckets follows a 4 KB header */
typedef struct { uint64_t key, ref; } index_slot;

typedef struct {
    char path[512];
    index_slot *slots, *pristine;
    size_t n_slots;
    uint64_t n_slabs;
} tampered_table;

/* Writes the index as tampered, reopens the store and expects the table refused with a message
 * containing expect (or, NULL, served whole); then puts the pristine index back. */
static void reopen_tampered(tampered_table *tt, const char *expect)
{
    FILE *f = fopen(tt->path, "r+");
    EXPECT(f && fseek(f, INDEX_OFFSET, SEEK_SET) == 0 &&
           fwrite(tt->slots, sizeof(index_slot), tt->n_slots, f) == tt->n_slots);
    if (f)
        fclose(f);
    embps_store *s = open_store("tampered", 0, 0, 0);
    embps_table *t;
    int rc = embps_table_get(s, "c", &t);
    if (expect) {
        EXPECT(rc == EMBPS_E_CORRUPT && strstr(embps_errormsg(), expect));
    } else {
        embps_table_stats st;
        EXPECT_OK(rc);
        if (!rc) {
            embps_table_describe(t, NULL, &st);
            EXPECT(st.rows == 256 && st.slabs_used == 256);
            EXPECT_OK(embps_table_check(t));
        }
    }
    embps_store_close(s);
    memcpy(tt->slots, tt->pristine, tt->n_slots * sizeof(index_slot));
}

/* A live slot of the first (half 0) or second half of the buckets, the n-th found. */
static size_t live_slot(const tampered_table *tt, int half, size_t n)
{
    for (size_t i = half ? tt->n_slots / 2 : 0; i < tt->n_slots; i++)
        if (tt->slots[i].ref && !n--)
            return i;
    return 0;
}

/* An empty slot of bucket b. */
static size_t empty_slot(const tampered_table *tt, size_t b)
{
    for (size_t i = b * 16; i < b * 16 + 16; i++)
        if (!tt->slots[i].ref)
            return i;
    return 0;
}

static void test_recovery_reports_corruption(void)
{
    embps_store *s = open_store("tampered", 0, 0, 0);
    embps_table_spec spec = spec_of(EMBPS_OPT_SGD, 4, 500000);
    embps_table *t;
    embps_table_stats st;
    uint64_t keys[256];
    float rows[256 * 4];
    for (int i = 0; i < 256; i++)
        keys[i] = 1000 + (uint64_t)i;
    fill(rows, 256 * 4, 1.0f);
    EXPECT_OK(embps_table_create(s, "c", &spec, &t));
    EXPECT_OK(embps_table_assign(t, keys, 256, rows, 256 * 4, NULL, 0));
    embps_table_describe(t, NULL, &st);
    embps_store_close(s);
    EXPECT(st.buckets >= 65536);
    tampered_table tt = {.n_slots = st.buckets * 16, .n_slabs = st.slabs_total};
    snprintf(tt.path, sizeof(tt.path), "%s/tampered/c.table", root);
    tt.slots = malloc(tt.n_slots * sizeof(index_slot));
    tt.pristine = malloc(tt.n_slots * sizeof(index_slot));
    FILE *f = fopen(tt.path, "r");
    EXPECT(f && fseek(f, INDEX_OFFSET, SEEK_SET) == 0 &&
           fread(tt.pristine, sizeof(index_slot), tt.n_slots, f) == tt.n_slots);
    if (f)
        fclose(f);
    memcpy(tt.slots, tt.pristine, tt.n_slots * sizeof(index_slot));
    const size_t a = live_slot(&tt, 0, 0), a2 = live_slot(&tt, 0, 1), b = live_slot(&tt, 1, 0);
    EXPECT(tt.slots[a].ref && tt.slots[a2].ref && tt.slots[b].ref);
    char twice[64];
    snprintf(twice, sizeof(twice), "slab %llu is referenced twice", (unsigned long long)tt.slots[a].ref);

    reopen_tampered(&tt, NULL);
    tt.slots[b].ref = tt.slots[a].ref;   /* slabs shared within a half, and across */
    reopen_tampered(&tt, twice);
    tt.slots[a2].ref = tt.slots[a].ref;
    reopen_tampered(&tt, twice);
    tt.slots[b].ref = tt.n_slabs + 1;    /* beyond the pool; then the reserved key */
    reopen_tampered(&tt, "holds an impossible entry");
    tt.slots[a].key = UINT64_MAX;
    reopen_tampered(&tt, "holds an impossible entry");
    char held[64];   /* a copy of a's key, with a slab of its own: in a's bucket, and in the other half */
    snprintf(held, sizeof(held), "key %llu is held twice", (unsigned long long)tt.slots[a].key);
    tt.slots[empty_slot(&tt, a / 16)] = (index_slot){tt.slots[a].key, tt.n_slabs};
    reopen_tampered(&tt, held);
    tt.slots[empty_slot(&tt, tt.n_slots / 16 - 1)] = (index_slot){tt.slots[a].key, tt.n_slabs};
    reopen_tampered(&tt, held);
    reopen_tampered(&tt, NULL);
    free(tt.slots);
    free(tt.pristine);
}

/* Crash at every persist point of an assign/delete workload whose values encode (key, version). */
static void test_crash_sweep(void)
{
    enum { DIM = 4, KEYS = 64, OPS = 60, BATCH = 6 };
    uint64_t points = 0;
    for (uint64_t crash_at = 1;; crash_at++) {
        char name[64];
        snprintf(name, sizeof(name), "crash_%llu", (unsigned long long)crash_at);
        embps_store *s = open_store(name, 0, 0, 0);
        embps_table_spec spec = spec_of(EMBPS_OPT_SGD, DIM, KEYS);
        embps_table *t;
        EXPECT_OK(embps_table_create(s, "t", &spec, &t));
        embps_store_close(s);
        s = open_store(name, 1, crash_at, crash_at % 2 ? 0.5 : 0.0);
        EXPECT_OK(embps_table_get(s, "t", &t));
        float acked[KEYS], inflight[KEYS];
        uint64_t acked_v[KEYS] = {0}, inflight_v[KEYS];   /* each assign advances a row's version by 1 */
        fill(acked, KEYS, -1.0f);   /* -1: absent */
        uint64_t rng = crash_at;
        int crashed = 0;
        for (int op = 0; op < OPS && !crashed; op++) {
            memcpy(inflight, acked, sizeof(acked));
            memcpy(inflight_v, acked_v, sizeof(acked_v));
            uint64_t keys[BATCH];
            float rows[BATCH * DIM];
            for (int i = 0; i < BATCH; i++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                keys[i] = (rng >> 33) % KEYS;
                fill(rows + i * DIM, DIM, (float)(op * 1000 + (int)keys[i]));
            }
            int deleting = op % 5 == 4;
            int rc = deleting ? embps_table_delete(t, keys, BATCH, NULL)
                              : embps_table_assign(t, keys, BATCH, rows, BATCH * DIM, NULL, 0);
            for (int i = 0; i < BATCH; i++) {
                if (!deleting && inflight[keys[i]] == acked[keys[i]])   /* once per key of the batch */
                    inflight_v[keys[i]] = acked_v[keys[i]] + 1;
                else if (deleting)
                    inflight_v[keys[i]] = 0;
                inflight[keys[i]] = deleting ? -1.0f : rows[i * DIM];
            }
            if (rc == EMBPS_E_CRASHED) {
                crashed = 1;
            } else {
                memcpy(acked, inflight, sizeof(acked));
                memcpy(acked_v, inflight_v, sizeof(acked_v));
            }
        }
        if (!crashed)
            points = embps_store_persist_points(s);
        embps_store_close(s);
        if (!crashed)
            break;
        s = open_store(name, 0, 0, 0);
        EXPECT_OK(embps_table_get(s, "t", &t));
        EXPECT_OK(embps_table_check(t));
        for (uint64_t k = 0; k < KEYS; k++) {
            float row[DIM];
            uint8_t found;
            uint64_t version;
            EXPECT_OK(embps_table_lookup(t, &k, 1, row, DIM, NULL, 0, &found));
            EXPECT_OK(embps_table_lookup_versioned(t, &k, 1, row, DIM, NULL, 0, &version));
            float got = found ? row[0] : -1.0f;
            for (int j = 1; j < DIM && found; j++)
                EXPECT(row[j] == row[0]);   /* not torn */
            EXPECT(got == acked[k] || got == inflight[k]);
            /* the version survives with the row it counts */
            EXPECT(got == acked[k] ? version == acked_v[k] : version == inflight_v[k]);
        }
        embps_store_close(s);
    }
    EXPECT(points > 50);
    printf("crash sweep: %llu persist points, each crashed at and recovered\n", (unsigned long long)points);
}

/* Version clocks: contributions counted per occurrence or as given, returned with the row, and what a
 * refresh of mirrors selects. */
static void test_versions_count_contributions(void)
{
    enum { DIM = 4 };
    embps_store *s = open_store("versions", 0, 0, 0);
    embps_table_spec spec = spec_of(EMBPS_OPT_ADAGRAD, DIM, 64);
    embps_table *t;
    EXPECT_OK(embps_table_create(s, "v", &spec, &t));
    uint64_t keys[4] = {1, 2, 1, 1};
    uint32_t counts[2] = {5, 2};
    float g[4 * DIM], rows[4 * DIM], state[4 * DIM], stale_rows[4 * (2 * DIM)];
    uint64_t v[4], got_v[4];
    uint32_t index[4];
    size_t m;
    fill(g, 4 * DIM, 0.5f);
    EXPECT_OK(embps_table_update(t, keys, 4, g, 4 * DIM));                 /* key 1: 3, key 2: 1 */
    EXPECT_OK(embps_table_update_counted(t, keys, 2, g, 2 * DIM, counts)); /* key 1: +5, key 2: +2 */
    EXPECT(embps_table_update_counted(t, keys, 2, g, 2 * DIM, (uint32_t[]){1, 0}) == EMBPS_E_INVALID_ARGUMENT);
    uint64_t probe[3] = {1, 2, 3};
    EXPECT_OK(embps_table_lookup_versioned(t, probe, 3, rows, 3 * DIM, state, 3 * DIM, v));
    EXPECT(v[0] == 8 && v[1] == 3 && v[2] == 0);
    float plain[3 * DIM], plain_state[3 * DIM];
    EXPECT_OK(embps_table_lookup(t, probe, 3, plain, 3 * DIM, plain_state, 3 * DIM, NULL));
    EXPECT(memcmp(rows, plain, sizeof(plain)) == 0 && memcmp(state, plain_state, sizeof(plain)) == 0);
    /* held at 5, 3 and "no copy", bound 2: key 1 is 3 ahead (stale), key 2 is not, key 3 has no copy */
    uint64_t held[3] = {5, 3, EMBPS_NO_VERSION};
    EXPECT_OK(embps_table_lookup_stale(t, probe, held, 3, 2, 1, index, got_v, stale_rows, 3 * 2 * DIM, &m));
    EXPECT(m == 2 && index[0] == 0 && index[1] == 2 && got_v[0] == 8 && got_v[1] == 0);
    EXPECT(memcmp(stale_rows, rows, DIM * sizeof(float)) == 0);
    EXPECT(memcmp(stale_rows + DIM, state, DIM * sizeof(float)) == 0);
    EXPECT(embps_table_lookup_stale(t, probe, held, 3, 2, 0, index, got_v, stale_rows, 3 * 2 * DIM, &m) ==
           EMBPS_E_INVALID_ARGUMENT);   /* rows sized for state it does not want */
    EXPECT_OK(embps_table_assign(t, probe, 1, rows, DIM, NULL, 0));
    EXPECT_OK(embps_table_lookup_versioned(t, probe, 1, rows, DIM, NULL, 0, v));
    EXPECT(v[0] == 9);
    embps_store_close(s);
    s = open_store("versions", 0, 0, 0);   /* persisted with the rows */
    EXPECT_OK(embps_table_get(s, "v", &t));
    EXPECT_OK(embps_table_lookup_versioned(t, probe, 3, rows, 3 * DIM, NULL, 0, v));
    EXPECT(v[0] == 9 && v[1] == 3 && v[2] == 0);
    embps_store_close(s);
}

/* Readers must never see a torn row, nor another key's, while a writer replaces and deletes rows (and
 * reuses the slots of deleted keys for others).  A row's floats all hold v * 64 + key.  Batches longer
 * than the read pipeline's depth, so that its every stage runs. */
enum { RACE_KEYS = 64, RACE_BATCH = 3 * RACE_KEYS };

typedef struct {
    embps_table *t;
    volatile int stop;
    int torn, misplaced;
} race;

static void *reader(void *arg)
{
    race *r = arg;
    uint64_t keys[RACE_BATCH];
    float out[RACE_BATCH * 16];
    for (int i = 0; i < RACE_BATCH; i++)
        keys[i] = (uint64_t)(i % RACE_KEYS);
    while (!r->stop) {
        uint8_t found[RACE_BATCH];
        embps_table_lookup(r->t, keys, RACE_BATCH, out, RACE_BATCH * 16, NULL, 0, found);
        for (int i = 0; i < RACE_BATCH; i++) {
            for (int j = 1; j < 16 && found[i]; j++)
                r->torn |= out[i * 16 + j] != out[i * 16];
            r->misplaced |= found[i] && (uint64_t)out[i * 16] % RACE_KEYS != keys[i];
        }
    }
    return NULL;
}

static void test_lock_free_reads_race_writer(void)
{
    embps_store *s = open_store("race", 0, 0, 0);
    embps_table_spec spec = spec_of(EMBPS_OPT_SGD, 16, RACE_KEYS);
    embps_table *t;
    EXPECT_OK(embps_table_create(s, "t", &spec, &t));
    race r = {.t = t};
    pthread_t threads[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&threads[i], NULL, reader, &r);
    for (int v = 0; v < 3000; v++) {
        uint64_t keys[8];
        float rows[8 * 16];
        for (int i = 0; i < 8; i++) {
            keys[i] = (uint64_t)((v * 8 + i) % RACE_KEYS);
            fill(rows + i * 16, 16, (float)(v * RACE_KEYS + (int)keys[i]));
        }
        if (v % 7 == 6)
            EXPECT_OK(embps_table_delete(t, keys, 8, NULL));
        else
            EXPECT_OK(embps_table_assign(t, keys, 8, rows, 8 * 16, NULL, 0));
    }
    r.stop = 1;
    for (int i = 0; i < 2; i++)
        pthread_join(threads[i], NULL);
    EXPECT(!r.torn);
    EXPECT(!r.misplaced);
    EXPECT_OK(embps_table_check(t));
    embps_store_close(s);
}

static void test_gather_points_at_rows(void)
{
    embps_store *s = open_store("gather", 0, 0, 0);
    embps_table_spec spec = spec_of(EMBPS_OPT_ROWWISE_ADAGRAD, 8, 100);
    embps_table *t;
    EXPECT_OK(embps_table_create(s, "t", &spec, &t));
    uint64_t keys[3] = {10, 20, 30};
    float rows[3 * 8];
    fill(rows, 24, 2.5f);
    EXPECT_OK(embps_table_assign(t, keys, 2, rows, 16, NULL, 0));
    embps_sge sge[3];
    uint64_t guard;
    EXPECT_OK(embps_table_gather_begin(t, keys, 3, 1, sge, &guard));
    EXPECT(sge[0].found && sge[1].found && !sge[2].found && sge[0].len == 9 * sizeof(float));
    EXPECT(((float *)(uintptr_t)sge[1].addr)[7] == 2.5f);
    void *base;
    size_t len;
    embps_table_pool_region(t, &base, &len);
    EXPECT(sge[0].addr >= (uint64_t)(uintptr_t)base && sge[0].addr + sge[0].len <= (uint64_t)(uintptr_t)base + len);
    embps_table_gather_end(t, guard);
    embps_store_close(s);
}

typedef struct {
    embps_table *t;
    _Atomic int pinned, released;
} pin;

/* Holds a gather guard for a second, as a data-path reply to a slow client does. */
static void *pin_rows(void *arg)
{
    pin *p = arg;
    uint64_t key = 1, guard;
    embps_sge sge;
    EXPECT_OK(embps_table_gather_begin(p->t, &key, 1, 0, &sge, &guard));
    atomic_store(&p->pinned, 1);
    sleep(1);
    atomic_store(&p->released, 1);
    embps_table_gather_end(p->t, guard);
    return NULL;
}

/* Each update of a 64-row table retires 64 slabs, and the pool has 4096 to spare: from the 65th on,
 * updates need the slabs the guard pins, and wait for it instead of failing. */
static void test_writers_wait_for_pinned_slabs(void)
{
    embps_store *s = open_store("pinned", 0, 0, 0);
    embps_table_spec spec = spec_of(EMBPS_OPT_SGD, 4, 64);
    embps_table *t;
    EXPECT_OK(embps_table_create(s, "t", &spec, &t));
    uint64_t keys[64];
    float grads[64 * 4];
    for (int i = 0; i < 64; i++)
        keys[i] = (uint64_t)i;
    fill(grads, 64 * 4, 1.0f);
    EXPECT_OK(embps_table_update(t, keys, 64, grads, 64 * 4));
    pin p = {.t = t};
    pthread_t thread;
    pthread_create(&thread, NULL, pin_rows, &p);
    while (!atomic_load(&p.pinned))
        usleep(1000);
    for (int v = 0; v < 100; v++)
        EXPECT_OK(embps_table_update(t, keys, 64, grads, 64 * 4));
    EXPECT(atomic_load(&p.released));   /* the 65th update cannot have finished before the guard ended */
    pthread_join(thread, NULL);
    EXPECT_OK(embps_table_check(t));
    embps_store_close(s);
}

static int connect_to(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT(fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
    return fd;
}

/* Sends one request; returns the reply header and reads the payload into payload (if it fits). */
/* body: what follows the keys (an update's gradients and counts, a refresh's versions and bound). */
static embps_wire_reply wire_call_body(int fd, uint8_t op, uint8_t flags, const char *name, const uint64_t *keys,
                                       uint32_t n, uint32_t dim, const void *body, size_t body_len, void *payload,
                                       size_t cap)
{
    embps_wire_request rq = {EMBPS_WIRE_MAGIC, op, flags, (uint8_t)strlen(name), 0, n, dim};
    size_t len = sizeof(rq) + rq.name_len + n * 8 + body_len;
    char *buf = malloc(len), *p = buf;
    memcpy(p, &rq, sizeof(rq));
    memcpy(p += sizeof(rq), name, rq.name_len);
    memcpy(p += rq.name_len, keys, n * 8);
    if (body_len)
        memcpy(p + n * 8, body, body_len);
    EXPECT(send(fd, buf, len, MSG_NOSIGNAL) == (ssize_t)len);   /* one send: fits the socket buffer */
    free(buf);
    embps_wire_reply reply = {0};
    EXPECT(recv(fd, &reply, sizeof(reply), MSG_WAITALL) == sizeof(reply));
    char skip[1024];
    size_t rest = reply.msg_len + reply.payload_bytes;
    if (rest && reply.msg_len == 0 && reply.payload_bytes <= cap) {
        EXPECT(recv(fd, payload, rest, MSG_WAITALL) == (ssize_t)rest);
        rest = 0;
    }
    while (rest) {
        ssize_t got = recv(fd, skip, rest < sizeof(skip) ? rest : sizeof(skip), 0);
        if (got <= 0)
            break;
        rest -= (size_t)got;
    }
    return reply;
}

static embps_wire_reply wire_call(int fd, uint8_t op, uint8_t flags, const char *name, const uint64_t *keys,
                                  uint32_t n, uint32_t dim, const float *grads, void *payload, size_t cap)
{
    return wire_call_body(fd, op, flags, name, keys, n, dim, grads, grads ? (size_t)n * dim * 4 : 0, payload, cap);
}

static void test_data_server_over_loopback(void)
{
    embps_store *s = open_store("data_server", 0, 0, 0);
    embps_table_spec spec = spec_of(EMBPS_OPT_SGD, 4, 100);
    spec.init = EMBPS_INIT_ZEROS;
    embps_table *t;
    EXPECT_OK(embps_table_create(s, "t", &spec, &t));
    embps_data_server_config cfg = {.host = "127.0.0.1", .port = 0, .max_batch_keys = 64,
                                    .max_request_bytes = 1 << 16, .max_connections = 4, .send_timeout_ms = 1000,
                                    .receive_timeout_ms = 1000, .idle_timeout_ms = 60000};
    embps_data_server *d;
    EXPECT_OK(embps_data_server_start(s, &cfg, &d));
    int fd = connect_to(embps_data_server_port(d)), idle = connect_to(embps_data_server_port(d));
    uint64_t keys[65] = {5, 6, 7};
    float grads[2 * 4], out[3 * 4 + 3];
    fill(grads, 8, 1.0f);
    EXPECT(wire_call(fd, EMBPS_WIRE_OP_UPDATE, 0, "t", keys, 2, 4, grads, NULL, 0).status == EMBPS_OK);
    embps_wire_reply r = wire_call(fd, EMBPS_WIRE_OP_LOOKUP, 0, "t", keys, 3, 4, NULL, out, sizeof(out));
    EXPECT(r.status == EMBPS_OK && r.payload_bytes == 3 * (16 + 1));
    EXPECT(out[0] == -0.1f && out[7] == -0.1f && out[8] == 0.0f);   /* key 7 missing: its zero initial row */
    const uint8_t *found = (const uint8_t *)&out[12];
    EXPECT(found[0] == 1 && found[1] == 1 && found[2] == 0);
    EXPECT(wire_call(fd, EMBPS_WIRE_OP_LOOKUP, 0, "nope", keys, 1, 4, NULL, out, sizeof(out)).status ==
           EMBPS_E_NOT_FOUND);
    /* key 5 once more, counted as 3 contributions: versions 4, 1 and 0; a refresh held at 1, 1, 0 with
     * bound 2 answers key 5 only (3 ahead), as its count, version, position and row */
    struct { float g[4]; uint32_t count; } counted = {{0, 0, 0, 0}, 3};
    EXPECT(wire_call_body(fd, EMBPS_WIRE_OP_UPDATE, EMBPS_WIRE_WITH_COUNTS, "t", keys, 1, 4, &counted,
                          sizeof(counted), NULL, 0).status == EMBPS_OK);
    uint64_t held[4] = {1, 1, 0, 2}, refreshed[5];
    r = wire_call_body(fd, EMBPS_WIRE_OP_REFRESH, 0, "t", keys, 3, 4, held, sizeof(held), refreshed,
                       sizeof(refreshed));
    uint32_t at;
    float row[4];
    memcpy(&at, &refreshed[2], 4);
    memcpy(row, (char *)refreshed + 20, 12);
    EXPECT(r.status == EMBPS_OK && r.payload_bytes == 8 + 12 + 16);
    EXPECT(refreshed[0] == 1 && refreshed[1] == 4 && at == 0 && row[0] == -0.1f);
    grads[0] = NAN;
    EXPECT(wire_call(fd, EMBPS_WIRE_OP_UPDATE, 0, "t", keys, 1, 4, grads, NULL, 0).status == EMBPS_E_NONFINITE);
    EXPECT(wire_call(fd, EMBPS_WIRE_OP_LOOKUP, 0, "t", keys, 65, 4, NULL, NULL, 0).status == EMBPS_E_TOO_LARGE);
    char probe;
    EXPECT(recv(fd, &probe, 1, 0) == 0);   /* an oversized request closes the connection */
    close(fd);
    embps_data_server_stats stats;
    embps_data_server_stats_get(d, &stats);
    EXPECT(stats.lookup.requests == 3 && stats.lookup.errors == 2 && stats.update.requests == 3);
    EXPECT(stats.refresh.requests == 1 && stats.refresh.keys == 3 && stats.refresh.errors == 0);
    EXPECT(stats.lookup.keys == 3 + 1 && stats.connections_total >= 1);
    embps_data_server_stop(d);   /* with a connection still open */
    close(idle);
    embps_store_close(s);
}

/* The client side against the server: payloads that fit and that do not (the part read with the header
 * kept, the rest left), error messages read ahead into the payload buffer and cut to the caller's, and a
 * pooled connection the server closed found stale before anything is sent. */
static void test_data_client_exchanges(void)
{
    embps_store *s = open_store("data_client", 0, 0, 0);
    embps_table_spec spec = spec_of(EMBPS_OPT_SGD, 4, 100);
    spec.init = EMBPS_INIT_ZEROS;
    embps_table *t;
    EXPECT_OK(embps_table_create(s, "t", &spec, &t));
    embps_data_server_config cfg = {.host = "127.0.0.1", .port = 0, .max_batch_keys = 64,
                                    .max_request_bytes = 1 << 16, .max_connections = 4, .send_timeout_ms = 1000,
                                    .receive_timeout_ms = 1000, .idle_timeout_ms = 60000};
    embps_data_server *d;
    EXPECT_OK(embps_data_server_start(s, &cfg, &d));
    int fd = connect_to(embps_data_server_port(d));
    uint64_t keys[65] = {5, 6, 7};
    float grads[2 * 4], out[3 * 4 + 3];
    const size_t payload = 3 * (16 + 1);   /* rows, then found bytes */
    fill(grads, 8, 1.0f);
    embps_wire_reply reply;
    char msg[16];
    size_t got;
    embps_exchange_request rq = {.op = EMBPS_WIRE_OP_UPDATE, .name = "t", .name_len = 1, .keys = keys, .n_keys = 2,
                                 .dim = 4, .body = {grads}, .body_bytes = {sizeof(grads)}};
    EXPECT(embps_data_client_exchange(fd, &rq, 0, 1000, &reply, msg, sizeof(msg), NULL, 0, &got) == EMBPS_EXCHANGE_REPLIED);
    EXPECT(reply.status == EMBPS_OK && reply.payload_bytes == 0);
    rq = (embps_exchange_request){.op = EMBPS_WIRE_OP_LOOKUP, .name = "t", .name_len = 1, .keys = keys, .n_keys = 3};
    EXPECT(embps_data_client_exchange(fd, &rq, 1, 1000, &reply, msg, sizeof(msg), out, sizeof(out), &got) ==
           EMBPS_EXCHANGE_REPLIED);
    const uint8_t *found = (const uint8_t *)&out[12];
    EXPECT(reply.status == EMBPS_OK && reply.payload_bytes == payload && got == payload && out[0] == -0.1f &&
           out[8] == 0.0f);
    EXPECT(found[0] == 1 && found[2] == 0);
    memset(out, 0, sizeof(out));
    EXPECT(embps_data_client_exchange(fd, &rq, 1, 1000, &reply, msg, sizeof(msg), out, 4, &got) == EMBPS_EXCHANGE_REPLIED);
    EXPECT(reply.payload_bytes == payload && got <= 4);   /* too large for the buffer: the rest left unread */
    EXPECT(embps_data_client_receive(fd, (char *)out + got, payload - got, 1000) == EMBPS_EXCHANGE_REPLIED &&
           out[0] == -0.1f && out[7] == -0.1f);
    rq.name = "nope";
    rq.name_len = 4;
    EXPECT(embps_data_client_exchange(fd, &rq, 1, 1000, &reply, msg, sizeof(msg), out, sizeof(out), &got) ==
           EMBPS_EXCHANGE_REPLIED);
    EXPECT(reply.status == EMBPS_E_NOT_FOUND && reply.msg_len == sizeof(msg) - 1 && strlen(msg) == sizeof(msg) - 1 &&
           got == 0);
    EXPECT(strcmp(msg, "no table named ") == 0);   /* its first 15 bytes; the rest dropped, in step for the next */
    rq.n_keys = 65;   /* oversized: the server answers and closes the connection */
    EXPECT(embps_data_client_exchange(fd, &rq, 1, 1000, &reply, msg, sizeof(msg), out, sizeof(out), &got) ==
           EMBPS_EXCHANGE_REPLIED && reply.status == EMBPS_E_TOO_LARGE);
    rq.n_keys = 1;
    int stale = 0;
    for (int tries = 0; tries < 1000 && !stale; tries++, usleep(1000))
        stale = embps_data_client_exchange(fd, &rq, 1, 1000, &reply, msg, sizeof(msg), out, sizeof(out), &got) ==
                EMBPS_EXCHANGE_STALE;
    EXPECT(stale);
    EXPECT(embps_data_client_exchange(fd, &rq, 0, 1000, &reply, msg, sizeof(msg), out, sizeof(out), &got) ==
           EMBPS_EXCHANGE_BROKEN);   /* not pooled: sent, and the closed connection says so */
    close(fd);
    embps_data_server_stop(d);
    embps_store_close(s);
}

/* ---- replies survive signals ----------------------------------------------- */

static void on_signal(int sig)
{
    (void)sig;
}

typedef struct {
    int fd;
    const char *bytes;
    size_t len;
    _Atomic int stop;
} signal_test;

static void *send_all(void *arg)
{
    signal_test *st = arg;
    for (size_t sent = 0; sent < st->len;) {
        ssize_t put = send(st->fd, st->bytes + sent, st->len - sent, MSG_NOSIGNAL);
        if (put <= 0)
            break;
        sent += (size_t)put;
    }
    return NULL;
}

static void *signal_storm(void *arg)
{
    signal_test *st = arg;
    while (!atomic_load(&st->stop)) {   /* at every thread: the kernel would pick the same one each time */
        DIR *tasks = opendir("/proc/self/task");
        for (struct dirent *e; tasks && (e = readdir(tasks));)
            if (e->d_name[0] != '.')
                syscall(SYS_tgkill, getpid(), atoi(e->d_name), SIGUSR1);   /* blocked but by the server's */
        if (tasks)
            closedir(tasks);
        usleep(200);
    }
    return NULL;
}

/* The server's end of a loopback connection: this process holds both. */
static int server_end_of(int client_fd)
{
    struct sockaddr_in mine, peer;
    socklen_t len = sizeof(mine);
    getsockname(client_fd, (struct sockaddr *)&mine, &len);
    for (int tries = 0; tries < 1000; tries++, usleep(1000)) {   /* until the acceptor has taken it */
        for (int fd = 3; fd < 1024; fd++) {
            len = sizeof(peer);
            if (fd != client_fd && getpeername(fd, (struct sockaddr *)&peer, &len) == 0 &&
                peer.sin_port == mine.sin_port && peer.sin_addr.s_addr == mine.sin_addr.s_addr)
                return fd;
        }
    }
    return -1;
}

/* A reply whose send a signal interrupts must still reach the client: the handler here has no
 * SA_RESTART (and socket calls with a timeout fail with EINTR even with it).  The client reads only
 * once the server's sends block, on small socket buffers, while signals keep coming. */
static void test_data_server_replies_despite_signals(void)
{
    enum { N = 20000, DIM = 4 };
    embps_store *s = open_store("signals", 0, 0, 0);
    embps_table_spec spec = spec_of(EMBPS_OPT_SGD, DIM, 100);
    embps_table *t;
    EXPECT_OK(embps_table_create(s, "u", &spec, &t));
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGUSR1, &sa, NULL);
    embps_data_server_config cfg = {.host = "127.0.0.1", .port = 0, .max_batch_keys = 64,
                                    .max_request_bytes = 1 << 16, .max_connections = 4, .send_timeout_ms = 30000,
                                    .receive_timeout_ms = 30000, .idle_timeout_ms = 60000};
    embps_data_server *d;
    EXPECT_OK(embps_data_server_start(s, &cfg, &d));
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);   /* threads started below inherit it */
    const size_t frame = sizeof(embps_wire_request) + 1 + 8 + DIM * sizeof(float);
    char *bytes = calloc(N, frame);
    for (size_t i = 0; i < N; i++) {
        embps_wire_request rq = {EMBPS_WIRE_MAGIC, EMBPS_WIRE_OP_UPDATE, 0, 1, 0, 1, DIM};
        memcpy(bytes + i * frame, &rq, sizeof(rq));
        bytes[i * frame + sizeof(rq)] = 'u';   /* key 0, zero gradients */
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0), small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));   /* before connecting: no autotuning */
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(embps_data_server_port(d))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT(connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
    int server_fd = server_end_of(fd);
    EXPECT(server_fd >= 0 && setsockopt(server_fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
    signal_test st = {.fd = fd, .bytes = bytes, .len = N * frame};
    pthread_t sender, storm;
    pthread_create(&sender, NULL, send_all, &st);
    embps_data_server_stats stats = {0};
    uint64_t before;
    do {   /* until the server's sends block: its count of answered requests stops growing */
        before = stats.update.requests;
        usleep(100 * 1000);
        embps_data_server_stats_get(d, &stats);
    } while (stats.update.requests != before);
    EXPECT(stats.update.requests < N);
    pthread_create(&storm, NULL, signal_storm, &st);
    usleep(300 * 1000);
    size_t ok = 0;
    embps_wire_reply reply;
    while (ok < N && recv(fd, &reply, sizeof(reply), MSG_WAITALL) == sizeof(reply) && reply.status == EMBPS_OK)
        ok++;
    EXPECT(ok == N);
    atomic_store(&st.stop, 1);
    pthread_join(storm, NULL);
    shutdown(fd, SHUT_RDWR);
    pthread_join(sender, NULL);
    close(fd);
    free(bytes);
    embps_data_server_stop(d);
    pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
    embps_store_close(s);
}

/* Jump hash gives the published algorithm's buckets (computed with Lamping & Veach's figure 1); a
 * placement table routes dense ids to their slot's owner and the rest (unlisted ids, ids outside a
 * feature's range, features past the table, sparse keys) by binary search, then jump hash. */
static void test_router_routes_a_batch(void)
{
    const uint64_t keys[] = {0, 1, 0xdeadbeef, UINT64_MAX, UINT64_C(1) << 63, UINT64_C(12345678901234567)};
    const int64_t by_4[] = {0, 0, 3, 2, 3, 0}, by_65536[] = {0, 21134, 64244, 18311, 53854, 46958};
    int64_t shard[40];
    EXPECT(embps_jump_hash_batch(keys, 6, 4, shard) == EMBPS_OK);
    EXPECT(memcmp(shard, by_4, sizeof(by_4)) == 0);
    EXPECT(embps_jump_hash_batch(keys, 6, 65536, shard) == EMBPS_OK);
    EXPECT(memcmp(shard, by_65536, sizeof(by_65536)) == 0);
    EXPECT(embps_jump_hash_batch(keys, 6, 0, shard) == EMBPS_E_INVALID_ARGUMENT);

    const uint64_t f = EMBPS_ROUTER_FEATURE_SHIFT;
    const uint64_t first[] = {10, 0}, span[] = {4, 0}, delta[] = {(uint64_t)-10, 0};
    const uint16_t owner16[] = {3, 1, UINT16_MAX, 2, UINT16_MAX};
    const uint32_t owner32[] = {3, 1, UINT32_MAX, 2, UINT32_MAX};
    const uint64_t sparse_keys[] = {(UINT64_C(5) << f) | 7, (UINT64_C(9) << f) | 1};
    const uint16_t sparse_owner[] = {1, 0};
    const uint64_t pattern[8] = {10, 11, 12, 13, 9, 14, (UINT64_C(5) << f) | 7, (UINT64_C(2) << f) | 10};
    uint64_t batch[40];
    int64_t expected[40], hashed;
    for (int i = 0; i < 40; i++) {
        batch[i] = pattern[i % 8] + (uint64_t)(i / 8) * (i % 8 >= 4 && i % 8 != 6 ? 1000 : 0);
        EXPECT(embps_jump_hash_batch(&batch[i], 1, 4, &hashed) == EMBPS_OK);
        const int64_t listed[] = {3, 1, hashed, 2, hashed, hashed, 1, hashed};
        expected[i] = listed[i % 8];
    }
    embps_router_table t = {.n_shards = 4, .n_features = 2, .first = first, .span = span, .delta = delta,
                            .owner_by_slot = owner16, .n_slots = 5, .owner_bytes = 2,
                            .sparse_keys = sparse_keys, .sparse_owner = sparse_owner, .n_sparse = 2};
    EXPECT(embps_router_route(&t, batch, 40, shard) == EMBPS_OK);
    EXPECT(memcmp(shard, expected, sizeof(expected)) == 0);
    t.owner_by_slot = owner32;
    t.owner_bytes = 4;
    memset(shard, 0xff, sizeof(shard));
    EXPECT(embps_router_route(&t, batch, 40, shard) == EMBPS_OK);
    EXPECT(memcmp(shard, expected, sizeof(expected)) == 0);
    EXPECT(embps_router_route(&t, batch, 3, shard) == EMBPS_OK);   /* shorter than the prefetch ring */
    EXPECT(memcmp(shard, expected, 3 * sizeof(int64_t)) == 0);
    t.owner_bytes = 3;
    EXPECT(embps_router_route(&t, batch, 40, shard) == EMBPS_E_INVALID_ARGUMENT);

    /* The split: a stable counting sort, and a shard out of range refused with order untouched. */
    const int64_t routed[] = {2, 0, 2, 1, 0, 2}, sorted_order[] = {1, 4, 3, 0, 2, 5}, sorted_bounds[] = {0, 2, 3, 6, 6};
    const uint64_t split_keys[] = {10, 11, 12, 13, 14, 15};
    int64_t order[6] = {-1, -1, -1, -1, -1, -1}, bounds[5];
    uint64_t grouped[6];
    EXPECT(embps_router_split(routed, split_keys, 6, 4, order, grouped, bounds) == EMBPS_OK);
    EXPECT(memcmp(order, sorted_order, sizeof(order)) == 0 && memcmp(bounds, sorted_bounds, sizeof(bounds)) == 0);
    for (int i = 0; i < 6; i++)
        EXPECT(grouped[i] == split_keys[sorted_order[i]]);
    memset(order, 0xff, sizeof(order));
    EXPECT(embps_router_split(routed, split_keys, 6, 2, order, grouped, bounds) == EMBPS_E_INVALID_ARGUMENT);
    EXPECT(order[0] == -1 && order[5] == -1);
}

int main(void)
{
    snprintf(root, sizeof(root), "/tmp/embps-native-test-%d", (int)getpid());
    mkdir(root, 0755);
    test_round_trip_and_reopen();
    test_bad_input_changes_nothing();
    test_store_creates_parent_directories();
    test_failed_create_leaves_nothing();
    test_concurrent_create_and_drop();
    test_drop_waits_only_for_its_table();
    test_store_refuses_a_table_file_under_another_name();
    test_recovery_reports_corruption();
    test_crash_sweep();
    test_versions_count_contributions();
    test_lock_free_reads_race_writer();
    test_gather_points_at_rows();
    test_writers_wait_for_pinned_slabs();
    test_data_server_over_loopback();
    test_data_client_exchanges();
    test_data_server_replies_despite_signals();
    test_router_routes_a_batch();
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
    if (system(cmd) != 0)
        failures++;
    printf("%s: %d failed\n", failures ? "FAILED" : "native store tests passed", failures);
    return failures != 0;
}
