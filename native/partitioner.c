/* partitioner.c -- greedy, deterministic refinement of a sample/row placement (embps_partitioner.h). */
#include "embps_partitioner.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "status.h"

/* Fetch probabilities and their steps are tabulated per host for counts below this many entries in
 * all, in each of the two tables (beyond a host's table they are computed). */
#define PROB_TABLE_ENTRIES (1u << 23)
/* Above (1 - e^-40) M_h users, (1 - c/M)^B < 4e-18: the probability is 1 in double precision. */
#define SATURATION_EXPONENT 40.0
/* A move must lower the score by more than this: gains are >= ~1e-9, rounding noise ~1e-20. */
#define MIN_GAIN 1e-14

/* A row's cells: a header {row, owner | (slots - 1) << 16}, then its slots {count, host}, a free slot
 * having count 0.  Edges point at headers, so one cache line usually holds all a sample's visit of
 * a row needs.  A row of degree d has min(hosts, d) slots: at most that many hosts can use it. */
typedef struct {
    uint32_t a;
    uint32_t b;
} cell;

struct embps_partitioner {
    uint64_t n_samples, n_rows, rows_used;
    uint32_t width, hosts, batch;
    uint64_t seed;
    uint32_t *edges;           /* n_samples x width header indices while the partitioner lives */
    double *cost;              /* hosts x hosts */
    uint16_t *host_of;         /* n_samples */
    uint32_t *degree;          /* n_rows */
    uint32_t *head;            /* n_rows: the cell index of each row's header */
    cell *cells;
    uint64_t *samples_at, *rows_at;   /* per host, kept exact */
    double *served;            /* per host: expected rows served to others per iteration */
    uint64_t *round_m;         /* per host: M_h frozen when the tables were built */
    uint64_t *saturation;      /* per host: counts from here on fetch with probability 1 */
    double *prob;              /* hosts x table_len, room for hosts x table_room */
    double *step;              /* the same layout: step() of each count */
    uint64_t table_len, table_room;
    double scale;              /* the starting objective: the balance terms' unit */
    double w_samples, w_rows, w_load, sample_slack, row_slack;
    double mean_samples, mean_rows, mean_load;
    uint64_t sample_offset, row_offset;   /* this round's visiting order */
    uint32_t threads;
    double *gain;              /* scratch, threads x hosts */
    uint32_t *count_of;        /* scratch, threads x hosts, kept all zero between uses */
    uint16_t *proposal;        /* a window's proposed hosts */
    uint32_t *candidate;       /* the window positions whose proposal is a move */
    cell **move_slots;         /* 2 x width: the slots of the move being committed, from and to per row */
};

/* Sample sweeps go in windows: the threads propose a host for each sample of a window against the
 * placement as it is at the window's start (reading only), then one thread re-checks the proposals
 * in order and applies those that still lower the score.  Proposals are pure functions of that
 * state, so the result is the same bit for bit with any number of threads. */
#define WINDOW 16384u
#define MAX_THREADS 64u

#define PREFETCH_SAMPLES 2     /* samples ahead whose rows' headers are prefetched */

static uint32_t owner_of(const embps_partitioner *p, uint32_t hd)
{
    return p->cells[hd].b & 0xffffu;
}

static uint32_t slots_of(const embps_partitioner *p, uint32_t hd)
{
    return (p->cells[hd].b >> 16) + 1;
}

static void set_owner(embps_partitioner *p, uint32_t hd, uint32_t owner)
{
    p->cells[hd].b = (p->cells[hd].b & 0xffff0000u) | owner;
}

/* ---- fetch probabilities -------------------------------------------------- */

static double exact_prob(uint64_t c, uint64_t m, uint32_t batch)
{
    if (c == 0)
        return 0.0;
    if (c >= m)
        return 1.0;
    return -expm1((double)batch * log1p(-(double)c / (double)m));
}

/* Inlined: it runs a few times per edge and per host in every sweep. */
static inline __attribute__((always_inline)) double prob(const embps_partitioner *p, uint32_t h, uint64_t c)
{
    if (c >= p->saturation[h])
        return c ? 1.0 : 0.0;
    if (c < p->table_len)
        return p->prob[(uint64_t)h * p->table_len + c];
    return exact_prob(c, p->round_m[h], p->batch);
}

/* prob(h, c + 1) - prob(h, c), what one more user of a row at h adds: the gains' term, tabulated
 * like prob() (the table holds exactly this difference, so sums of it are the same bit for bit). */
static inline __attribute__((always_inline)) double step(const embps_partitioner *p, uint32_t h, uint64_t c)
{
    if (c < p->table_len)
        return p->step[(uint64_t)h * p->table_len + c];
    return prob(p, h, c + 1) - prob(p, h, c);
}

/* Tables as long as the longest unsaturated range (within the allocation), so that lookups of the
 * counts that matter stay in cache. */
static void build_tables(embps_partitioner *p)
{
    uint64_t longest = 1;
    for (uint32_t h = 0; h < p->hosts; h++) {
        uint64_t m = p->samples_at[h];
        p->round_m[h] = m;
        double sat = ceil((double)m * -expm1(-SATURATION_EXPONENT / p->batch));
        p->saturation[h] = sat < (double)m ? (uint64_t)sat : m;
        if (p->saturation[h] + 1 > longest)
            longest = p->saturation[h] + 1;
    }
    p->table_len = longest < p->table_room ? longest : p->table_room;
    for (uint32_t h = 0; h < p->hosts; h++) {
        double *row = p->prob + (uint64_t)h * p->table_len;
        for (uint64_t c = 0; c < p->table_len; c++)
            row[c] = exact_prob(c, p->round_m[h], p->batch);
    }
    for (uint32_t h = 0; h < p->hosts; h++) {
        double *row = p->step + (uint64_t)h * p->table_len;
        for (uint64_t c = 0; c < p->table_len; c++)
            row[c] = prob(p, h, c + 1) - prob(p, h, c);
    }
}

/* ---- sparse counters ------------------------------------------------------ */

static cell *find_slot(embps_partitioner *p, uint32_t hd, uint32_t host)
{
    cell *c = &p->cells[hd + 1], *end = c + slots_of(p, hd);
    for (; c < end; c++)
        if (c->a && c->b == host)
            return c;
    return NULL;
}

static void count_add(embps_partitioner *p, uint32_t hd, uint32_t host)
{
    cell *c = find_slot(p, hd, host);
    if (!c) {
        c = &p->cells[hd + 1];
        while (c->a)
            c++;
        c->b = host;
    }
    c->a++;
}

/* Loads count_of[] with the row's counts (clear_counts() undoes it); returns how many hosts use the
 * row at least their saturation times. */
static uint32_t load_counts(const embps_partitioner *p, uint32_t hd, uint32_t *count_of)
{
    uint32_t saturated = 0;
    const cell *c = &p->cells[hd + 1], *end = c + slots_of(p, hd);
    for (; c < end; c++)
        if (c->a) {
            count_of[c->b] = c->a;
            saturated += c->a >= p->saturation[c->b];
        }
    return saturated;
}

static void clear_counts(const embps_partitioner *p, uint32_t hd, uint32_t *count_of)
{
    const cell *c = &p->cells[hd + 1], *end = c + slots_of(p, hd);
    for (; c < end; c++)
        count_of[c->b] = 0;
}

/* ---- the score ------------------------------------------------------------ */

/* Expected rows the owner serves for this row: sum over other users h of prob(h, c). */
static double row_served(const embps_partitioner *p, uint32_t hd, uint32_t owner)
{
    double sum = 0.0;
    const cell *c = &p->cells[hd + 1], *end = c + slots_of(p, hd);
    for (; c < end; c++)
        if (c->a && c->b != owner)
            sum += prob(p, c->b, c->a);
    return sum;
}

static double row_fetch_cost(const embps_partitioner *p, uint32_t hd, uint32_t owner)
{
    double sum = 0.0;
    const cell *c = &p->cells[hd + 1], *end = c + slots_of(p, hd);
    for (; c < end; c++)
        if (c->a && c->b != owner)
            sum += p->cost[(uint64_t)c->b * p->hosts + owner] * prob(p, c->b, c->a);
    return sum;
}

static double squared_deviation(const uint64_t *u, const double *d, uint32_t n, double mean)
{
    if (mean <= 0.0)
        return 0.0;
    double sum = 0.0;
    for (uint32_t h = 0; h < n; h++) {
        double x = ((u ? (double)u[h] : d[h]) - mean) / mean;
        sum += x * x;
    }
    return sum;
}

/* Change of sum_h ((x_h - mean) / mean)^2 when x_from loses `out` and x_to gains `in`. */
static double deviation_change(double x_from, double out, double x_to, double in, double mean)
{
    if (mean <= 0.0)
        return 0.0;
    return (in * (2.0 * (x_to - mean) + in) + out * (out - 2.0 * (x_from - mean))) / (mean * mean);
}

/* Host sizes, tables and loads as the placement is now. */
static void refresh(embps_partitioner *p)
{
    build_tables(p);
    memset(p->served, 0, p->hosts * sizeof(double));
    for (uint64_t e = 0; e < p->n_rows; e++)
        if (p->degree[e]) {
            uint32_t hd = p->head[e], o = owner_of(p, hd);
            p->served[o] += row_served(p, hd, o);
        }
    double total = 0.0;
    for (uint32_t h = 0; h < p->hosts; h++)
        total += p->served[h];
    p->mean_samples = (double)p->n_samples / p->hosts;
    p->mean_rows = (double)p->rows_used / p->hosts;
    p->mean_load = total / p->hosts;
}

static double objective(const embps_partitioner *p)
{
    double sum = 0.0;
    for (uint64_t e = 0; e < p->n_rows; e++)
        if (p->degree[e])
            sum += row_fetch_cost(p, p->head[e], owner_of(p, p->head[e]));
    return sum;
}

static double score(const embps_partitioner *p, double obj)
{
    return obj + p->w_samples * squared_deviation(p->samples_at, NULL, p->hosts, p->mean_samples)
               + p->w_rows * squared_deviation(p->rows_at, NULL, p->hosts, p->mean_rows)
               + p->w_load * squared_deviation(NULL, p->served, p->hosts, p->mean_load);
}

/* ---- creation ------------------------------------------------------------- */

static int check_config(const embps_partition_config *c)
{
    if (!c->edges && c->n_samples)
        return fail(EMBPS_E_INVALID_ARGUMENT, "edges is NULL");
    if (c->width < 1)
        return fail(EMBPS_E_INVALID_ARGUMENT, "width must be >= 1");
    if (c->n_samples > UINT32_MAX || c->n_rows >= UINT32_MAX)
        return fail(EMBPS_E_INVALID_ARGUMENT, "n_samples and n_rows must be < 2^32");
    if (c->hosts < 1 || c->hosts > EMBPS_PARTITION_MAX_HOSTS)
        return fail(EMBPS_E_INVALID_ARGUMENT, "hosts must be in [1, %u], got %u", EMBPS_PARTITION_MAX_HOSTS,
                    c->hosts);
    if (c->batch < 1)
        return fail(EMBPS_E_INVALID_ARGUMENT, "batch must be >= 1");
    if (c->threads > MAX_THREADS)
        return fail(EMBPS_E_INVALID_ARGUMENT, "threads must be at most %u, got %u", MAX_THREADS, c->threads);
    if (!c->link_cost || !c->row_owner || (!c->sample_host && c->n_samples))
        return fail(EMBPS_E_INVALID_ARGUMENT, "link_cost, row_owner and sample_host are required");
    for (uint64_t i = 0; i < (uint64_t)c->hosts * c->hosts; i++)
        if (!isfinite(c->link_cost[i]) || c->link_cost[i] < 0)
            return fail(EMBPS_E_INVALID_ARGUMENT, "link_cost[%llu][%llu] is not a finite cost >= 0",
                        (unsigned long long)(i / c->hosts), (unsigned long long)(i % c->hosts));
    double weights[] = {c->sample_balance, c->row_balance, c->load_balance, c->sample_slack, c->row_slack};
    for (size_t i = 0; i < sizeof(weights) / sizeof(weights[0]); i++)
        if (!isfinite(weights[i]) || weights[i] < 0)
            return fail(EMBPS_E_INVALID_ARGUMENT, "balance weights and slacks must be finite and >= 0");
    for (uint64_t i = 0; i < c->n_rows; i++)
        if (c->row_owner[i] >= c->hosts)
            return fail(EMBPS_E_INVALID_ARGUMENT, "row_owner[%llu] = %u is not a host", (unsigned long long)i,
                        c->row_owner[i]);
    for (uint64_t i = 0; i < c->n_samples; i++)
        if (c->sample_host[i] >= c->hosts)
            return fail(EMBPS_E_INVALID_ARGUMENT, "sample_host[%llu] = %u is not a host", (unsigned long long)i,
                        c->sample_host[i]);
    return EMBPS_OK;
}

static int allocate(embps_partitioner *p)
{
    uint64_t h = p->hosts;
    p->table_room = PROB_TABLE_ENTRIES / h;
    if (p->table_room > p->n_samples + 1)
        p->table_room = p->n_samples + 1;
    p->cost = malloc(h * h * sizeof(double));
    p->host_of = malloc((p->n_samples ? p->n_samples : 1) * sizeof(uint16_t));
    p->degree = calloc(p->n_rows ? p->n_rows : 1, sizeof(uint32_t));
    p->head = malloc((p->n_rows ? p->n_rows : 1) * sizeof(uint32_t));
    p->samples_at = calloc(h, sizeof(uint64_t));
    p->rows_at = calloc(h, sizeof(uint64_t));
    p->served = calloc(h, sizeof(double));
    p->round_m = calloc(h, sizeof(uint64_t));
    p->saturation = calloc(h, sizeof(uint64_t));
    p->prob = malloc(h * p->table_room * sizeof(double));
    p->step = malloc(h * p->table_room * sizeof(double));
    p->gain = calloc(h * p->threads, sizeof(double));
    p->count_of = calloc(h * p->threads, sizeof(uint32_t));
    p->proposal = malloc(WINDOW * sizeof(uint16_t));
    p->candidate = malloc(WINDOW * sizeof(uint32_t));
    p->move_slots = malloc(2 * (uint64_t)p->width * sizeof(cell *));
    if (!p->cost || !p->host_of || !p->degree || !p->head || !p->samples_at || !p->rows_at || !p->served ||
        !p->round_m || !p->saturation || !p->prob || !p->step || !p->gain || !p->count_of || !p->proposal ||
        !p->candidate || !p->move_slots)
        return fail(EMBPS_E_NOMEM, "out of memory for a partitioner of %llu samples and %llu rows",
                    (unsigned long long)p->n_samples, (unsigned long long)p->n_rows);
    return EMBPS_OK;
}

/* Runs work(job w) for each of n workers, on one thread each (the caller is worker 0); a worker whose
 * thread cannot start is run by the caller, to the same result. */
static void run_workers(uint32_t n, void *(*work)(void *), void *jobs, size_t job_size)
{
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (uint32_t w = 1; w < n; w++)
        started[w] = pthread_create(&threads[w], NULL, work, (char *)jobs + w * job_size) == 0;
    work(jobs);
    for (uint32_t w = 1; w < n; w++) {
        if (started[w])
            pthread_join(threads[w], NULL);
        else
            work((char *)jobs + w * job_size);
    }
}

/* Edges [lo, hi) of one worker of the passes over all edges. */
typedef struct {
    embps_partitioner *p;
    uint64_t lo, hi;
    uint32_t *degree;          /* count_degrees: this worker's counts */
    uint64_t bad;              /* count_degrees: the first edge beyond n_rows, or UINT64_MAX */
} edge_range;

#define MIN_EDGES_PER_WORKER (1u << 12)   /* a thread costs ~20 us */

/* Workers for n_edges: at most p->threads, each with at least MIN_EDGES_PER_WORKER edges. */
static uint32_t edge_workers(const embps_partitioner *p, uint64_t n_edges)
{
    uint64_t n = n_edges / MIN_EDGES_PER_WORKER;
    return n < 1 ? 1 : n < p->threads ? (uint32_t)n : p->threads;
}

static void split_edges(embps_partitioner *p, uint32_t n, edge_range *ranges)
{
    uint64_t n_edges = p->n_samples * p->width;
    for (uint32_t w = 0; w < n; w++)
        ranges[w] = (edge_range){p, n_edges * w / n, n_edges * (w + 1) / n, NULL, UINT64_MAX};
}

static void *count_range(void *job)
{
    edge_range *r = job;
    const uint32_t *edges = r->p->edges;
    uint64_t n_rows = r->p->n_rows;
    for (uint64_t i = r->lo; i < r->hi; i++) {
        uint32_t e = edges[i];
        if (e >= n_rows) {
            r->bad = i;
            break;
        }
        if (i + 16 < r->hi && edges[i + 16] < n_rows)
            __builtin_prefetch(&r->degree[edges[i + 16]], 1);
        r->degree[e]++;
    }
    return NULL;
}

/* Degrees, checking every edge on the way: each worker counts a range of edges into its own array,
 * then the counts are summed (the same whatever the number of workers). */
static int count_degrees(embps_partitioner *p)
{
    edge_range ranges[MAX_THREADS];
    uint32_t n = edge_workers(p, p->n_samples * p->width);
    split_edges(p, n, ranges);
    ranges[0].degree = p->degree;
    for (uint32_t w = 1; w < n; w++)
        if (!(ranges[w].degree = calloc(p->n_rows, sizeof(uint32_t)))) {
            for (uint32_t v = 1; v < w; v++)
                free(ranges[v].degree);
            return fail(EMBPS_E_NOMEM, "out of memory for counting degrees");
        }
    run_workers(n, count_range, ranges, sizeof(edge_range));
    uint64_t bad = UINT64_MAX;
    for (uint32_t w = 0; w < n; w++)
        if (ranges[w].bad < bad)
            bad = ranges[w].bad;
    for (uint32_t w = 1; w < n; w++) {
        for (uint64_t e = 0; e < p->n_rows; e++)
            p->degree[e] += ranges[w].degree[e];
        free(ranges[w].degree);
    }
    if (bad != UINT64_MAX)
        return fail(EMBPS_E_INVALID_ARGUMENT, "sample %llu uses row %u, beyond n_rows %llu",
                    (unsigned long long)(bad / p->width), p->edges[bad], (unsigned long long)p->n_rows);
    return EMBPS_OK;
}

/* The edges back from header indices to row indices. */
static void *restore_range(void *job)
{
    edge_range *r = job;
    for (uint64_t i = r->lo; i < r->hi; i++)
        r->p->edges[i] = r->p->cells[r->p->edges[i]].a;
    return NULL;
}

/* Rows in order of decreasing degree (capped here; ties in row order): the cells' layout, so that the
 * few hot rows, which take most of the edges, share cache lines and stay in cache. */
#define LAYOUT_DEGREE_CAP 65535u

/* Header indices in that order: head[e] for every row; *n_cells the cells in all. */
static int lay_out(embps_partitioner *p, uint64_t *n_cells_out)
{
    uint64_t *start = calloc(LAYOUT_DEGREE_CAP + 1, sizeof(uint64_t));
    if (!start)
        return fail(EMBPS_E_NOMEM, "out of memory for the row layout");
    for (uint64_t e = 0; e < p->n_rows; e++) {
        uint32_t d = p->degree[e];
        start[LAYOUT_DEGREE_CAP - (d < LAYOUT_DEGREE_CAP ? d : LAYOUT_DEGREE_CAP)] += 1 + (d < p->hosts ? d : p->hosts);
    }
    uint64_t n_cells = 0;
    for (uint32_t b = 0; b <= LAYOUT_DEGREE_CAP; b++) {
        uint64_t size = start[b];
        start[b] = n_cells;
        n_cells += size;
    }
    if (n_cells > UINT32_MAX) {
        free(start);
        return fail(EMBPS_E_INVALID_ARGUMENT, "the graph needs more than 2^32 row counters");
    }
    for (uint64_t e = 0; e < p->n_rows; e++) {
        uint32_t d = p->degree[e];
        uint64_t *at = &start[LAYOUT_DEGREE_CAP - (d < LAYOUT_DEGREE_CAP ? d : LAYOUT_DEGREE_CAP)];
        p->head[e] = (uint32_t)*at;
        *at += 1 + (d < p->hosts ? d : p->hosts);
    }
    free(start);
    *n_cells_out = n_cells;
    return EMBPS_OK;
}

/* Lays out the cells, then points the edges at the headers and counts each host's uses. */
static int build_cells(embps_partitioner *p, const uint16_t *row_owner)
{
    uint64_t n_cells = 0;
    int st = lay_out(p, &n_cells);
    if (st)
        return st;
    p->cells = calloc(n_cells ? n_cells : 1, sizeof(cell));
    if (!p->cells)
        return fail(EMBPS_E_NOMEM, "out of memory for %llu row counters", (unsigned long long)n_cells);
    for (uint64_t e = 0; e < p->n_rows; e++) {
        uint32_t d = p->degree[e], slots = d < p->hosts ? d : p->hosts;
        p->cells[p->head[e]].a = (uint32_t)e;
        p->cells[p->head[e]].b = row_owner[e] | (slots ? (slots - 1) << 16 : 0);
        if (d) {
            p->rows_used++;
            p->rows_at[row_owner[e]]++;
        }
    }
    for (uint64_t s = 0; s < p->n_samples; s++) {
        uint32_t *row = &p->edges[s * p->width], host = p->host_of[s];
        p->samples_at[host]++;
        if (s + PREFETCH_SAMPLES < p->n_samples)
            for (uint32_t j = 0; j < p->width; j++)
                __builtin_prefetch(&p->head[row[(PREFETCH_SAMPLES * p->width) + j]]);
        for (uint32_t j = 0; j < p->width; j++) {
            row[j] = p->head[row[j]];
            count_add(p, row[j], host);
        }
    }
    return EMBPS_OK;
}

int embps_partition_create(const embps_partition_config *cfg, embps_partitioner **out)
{
    if (!cfg || !out)
        return fail(EMBPS_E_INVALID_ARGUMENT, "config and out are required");
    int st = check_config(cfg);
    if (st)
        return st;
    embps_partitioner *p = calloc(1, sizeof(*p));
    if (!p)
        return fail(EMBPS_E_NOMEM, "out of memory for a partitioner");
    p->n_samples = cfg->n_samples;
    p->n_rows = cfg->n_rows;
    p->width = cfg->width;
    p->hosts = cfg->hosts;
    p->batch = cfg->batch;
    p->seed = cfg->seed;
    p->sample_slack = cfg->sample_slack;
    p->row_slack = cfg->row_slack;
    p->threads = cfg->threads ? cfg->threads : 1;
    if (!(st = allocate(p))) {
        memcpy(p->cost, cfg->link_cost, (uint64_t)p->hosts * p->hosts * sizeof(double));
        memcpy(p->host_of, cfg->sample_host, p->n_samples * sizeof(uint16_t));
        p->edges = cfg->edges;
        if ((st = count_degrees(p)))
            p->edges = NULL;   /* not rewritten yet: nothing to restore */
        else
            st = build_cells(p, cfg->row_owner);
    }
    if (st) {
        embps_partition_destroy(p);
        return st;
    }
    refresh(p);
    double start = objective(p);
    p->scale = start > 0.0 ? start : 1.0;
    p->w_samples = cfg->sample_balance * p->scale;
    p->w_rows = cfg->row_balance * p->scale;
    p->w_load = cfg->load_balance * p->scale;
    *out = p;
    return EMBPS_OK;
}

void embps_partition_destroy(embps_partitioner *p)
{
    if (!p)
        return;
    if (p->edges && p->cells) {
        edge_range ranges[MAX_THREADS];
        uint32_t n = edge_workers(p, p->n_samples * p->width);
        split_edges(p, n, ranges);
        run_workers(n, restore_range, ranges, sizeof(edge_range));
    }
    free(p->cost);
    free(p->host_of);
    free(p->degree);
    free(p->head);
    free(p->cells);
    free(p->samples_at);
    free(p->rows_at);
    free(p->served);
    free(p->round_m);
    free(p->saturation);
    free(p->prob);
    free(p->step);
    free(p->gain);
    free(p->count_of);
    free(p->proposal);
    free(p->candidate);
    free(p->move_slots);
    free(p);
}

/* ---- refinement ----------------------------------------------------------- */

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int embps_partition_begin_sweep(embps_partitioner *p, uint32_t round)
{
    if (!p)
        return fail(EMBPS_E_INVALID_ARGUMENT, "partitioner is NULL");
    refresh(p);
    uint64_t r = mix(p->seed ^ mix(round));
    p->sample_offset = p->n_samples ? r % p->n_samples : 0;
    p->row_offset = p->n_rows ? mix(r) % p->n_rows : 0;
    return EMBPS_OK;
}

/* Whether moving one of the row's users from `from` to any host leaves every fetch probability at 1
 * (a row of a tiny table): then the row adds nothing to any gain.  count_of[] holds its counts and
 * `saturated` hosts use it at least their saturation times (a host with a slot has a count > 0). */
static int saturated_everywhere(const embps_partitioner *p, uint32_t from, const uint32_t *count_of,
                                uint32_t saturated)
{
    return saturated == p->hosts && count_of[from] > p->saturation[from];
}

/* Reads the headers of sample s's rows in a loop of independent loads, so that the cache misses of
 * those the prefetches did not bring overlap (in a loop over the rows that does the work, each would
 * wait for the one before). */
static void touch_rows(const embps_partitioner *p, uint64_t s)
{
    const uint32_t *row = &p->edges[s * p->width];
    uint32_t seen = 0;
    for (uint32_t j = 0; j < p->width; j++)
        seen |= p->cells[row[j]].b;
    __asm__ volatile("" : : "r"(seen));
}

/* gain[k] = change of the objective if sample s moved from its host to k (gain[from] = 0). */
static void sample_move_gains(const embps_partitioner *p, uint64_t s, double *gain, uint32_t *count_of)
{
    uint32_t from = p->host_of[s], hosts = p->hosts;
    memset(gain, 0, hosts * sizeof(double));
    touch_rows(p, s);
    for (uint32_t j = 0; j < p->width; j++) {
        uint32_t hd = p->edges[s * p->width + j], o = owner_of(p, hd);
        uint32_t saturated = load_counts(p, hd, count_of);
        if (saturated_everywhere(p, from, count_of, saturated)) {
            clear_counts(p, hd, count_of);
            continue;
        }
        uint32_t c = count_of[from];
        double saved = from == o ? 0.0
                                 : p->cost[(uint64_t)from * hosts + o] * step(p, from, c - 1);
        for (uint32_t k = 0; k < hosts; k++) {
            if (k == from)
                continue;
            uint32_t ck = count_of[k];
            double added = k == o ? 0.0 : p->cost[(uint64_t)k * hosts + o] * step(p, k, ck);
            gain[k] += added - saved;
        }
        clear_counts(p, hd, count_of);
    }
}

/* The host sample s should move to (its own when no move lowers the score), with scratch of a worker. */
static uint32_t best_host(const embps_partitioner *p, uint64_t s, double *gain, uint32_t *count_of)
{
    double cap = (1.0 + p->sample_slack) * p->mean_samples;
    uint32_t from = p->host_of[s], best = from;
    sample_move_gains(p, s, gain, count_of);
    double best_change = -MIN_GAIN;
    for (uint32_t k = 0; k < p->hosts; k++) {
        if (k == from || (double)p->samples_at[k] + 1.0 > cap)
            continue;
        double change = gain[k] + p->w_samples * deviation_change((double)p->samples_at[from], 1.0,
                                                                (double)p->samples_at[k], 1.0, p->mean_samples);
        if (change < best_change) {
            best_change = change;
            best = k;
        }
    }
    return best;
}

/* Moves sample s to `to`, right after move_pays(p, s, to) said it pays: its rows' slots are those
 * move_pays found, but for `to` where it had none (a row twice in the sample has one after its first
 * place; a slot of `from` stays, as the sample counts twice in it). */
static void move_sample(embps_partitioner *p, uint64_t s, uint32_t to)
{
    uint32_t from = p->host_of[s];
    for (uint32_t j = 0; j < p->width; j++) {
        uint32_t hd = p->edges[s * p->width + j], o = owner_of(p, hd);
        cell *a = p->move_slots[2 * j], *b = p->move_slots[2 * j + 1] ? p->move_slots[2 * j + 1] : find_slot(p, hd, to);
        if (from != o)
            p->served[o] -= step(p, from, a->a - 1);
        a->a--;
        uint32_t c = b ? b->a : 0;
        if (to != o)
            p->served[o] += step(p, to, c);
        if (b)
            b->a++;
        else
            count_add(p, hd, to);
    }
    p->host_of[s] = (uint16_t)to;
    p->samples_at[from]--;
    p->samples_at[to]++;
}

/* Prefetches sample s's rows: each row's header and the cell up to 7 on, which brings the next line
 * too where the row's slots run into it (how many slots follow, the header's line does not yet say). */
static void prefetch_sample(const embps_partitioner *p, uint64_t s)
{
    const uint32_t *row = &p->edges[s * p->width];
    uint32_t last = p->hosts < 8 ? p->hosts : 7;
    for (uint32_t j = 0; j < p->width; j++) {
        __builtin_prefetch(&p->cells[row[j]], 1);
        __builtin_prefetch(&p->cells[row[j] + last], 1);
    }
}

static uint64_t sample_at(const embps_partitioner *p, uint64_t position)
{
    return (position + p->sample_offset) % p->n_samples;
}

typedef struct {
    embps_partitioner *p;
    uint32_t worker;
    uint64_t lo, hi;           /* the window */
} proposer;

/* Worker w proposes for every threads-th sample of the window, from its w-th. */
static void propose(const proposer *job)
{
    const embps_partitioner *p = job->p;
    double *gain = p->gain + (uint64_t)job->worker * p->hosts;
    uint32_t *count_of = p->count_of + (uint64_t)job->worker * p->hosts;
    for (uint64_t i = job->lo + job->worker; i < job->hi; i += p->threads) {
        uint64_t s = sample_at(p, i);
        if (i + p->threads * PREFETCH_SAMPLES < job->hi)
            prefetch_sample(p, sample_at(p, i + p->threads * PREFETCH_SAMPLES));
        p->proposal[i - job->lo] = (uint16_t)best_host(p, s, gain, count_of);
    }
}

static void *propose_main(void *job)
{
    propose(job);
    return NULL;
}

/* Proposals for the window [lo, hi), a worker per thread. */
static void propose_window(embps_partitioner *p, uint64_t lo, uint64_t hi)
{
    proposer jobs[MAX_THREADS];
    for (uint32_t w = 0; w < p->threads; w++)
        jobs[w] = (proposer){p, w, lo, hi};
    run_workers(p->threads, propose_main, jobs, sizeof(proposer));
}


/* The slots of hosts `from` (which has one) and `to` != from in the row at header hd, in one pass, into
 * at[0] and at[1] (NULL when `to` has none). */
static void find_pair(embps_partitioner *p, uint32_t hd, uint32_t from, uint32_t to, cell **at)
{
    at[0] = at[1] = NULL;
    cell *c = &p->cells[hd + 1], *end = c + slots_of(p, hd);
    for (; c < end; c++)
        if (c->a) {
            if (c->b == from)
                at[0] = c;
            else if (c->b == to)
                at[1] = c;
        }
}

/* Whether moving sample s to host `to` lowers the score, as the placement is now: gain[to] of
 * sample_move_gains() (the same terms, summed in the same order) and its balance term, under the cap. */
static int move_pays(embps_partitioner *p, uint64_t s, uint32_t to)
{
    uint32_t from = p->host_of[s], hosts = p->hosts;
    if ((double)p->samples_at[to] + 1.0 > (1.0 + p->sample_slack) * p->mean_samples)
        return 0;
    touch_rows(p, s);
    double gain = 0.0;
    for (uint32_t j = 0; j < p->width; j++) {
        uint32_t hd = p->edges[s * p->width + j], o = owner_of(p, hd);
        cell **at = &p->move_slots[2 * j];
        find_pair(p, hd, from, to, at);
        uint32_t c = at[0]->a, ck = at[1] ? at[1]->a : 0;
        double saved = from == o ? 0.0 : p->cost[(uint64_t)from * hosts + o] * step(p, from, c - 1);
        double added = to == o ? 0.0 : p->cost[(uint64_t)to * hosts + o] * step(p, to, ck);
        gain += added - saved;
    }
    double change = gain + p->w_samples * deviation_change((double)p->samples_at[from], 1.0,
                                                         (double)p->samples_at[to], 1.0, p->mean_samples);
    return change < -MIN_GAIN;
}

/* Re-checks the window's proposals in order against the placement as it now is, applying those that
 * still lower the score.  (Only the proposed host is re-checked: a full search here, single-threaded,
 * cost as much as the proposals of both threads.)  The moves are listed first, so that the rows of
 * the ones ahead can be prefetched. */
static uint64_t commit(embps_partitioner *p, uint64_t lo, uint64_t hi)
{
    uint32_t n = 0;
    for (uint64_t i = lo; i < hi; i++)
        if (p->proposal[i - lo] != p->host_of[sample_at(p, i)])
            p->candidate[n++] = (uint32_t)(i - lo);
    uint64_t moved = 0;
    for (uint32_t k = 0; k < n; k++) {
        if (k + PREFETCH_SAMPLES < n)
            prefetch_sample(p, sample_at(p, lo + p->candidate[k + PREFETCH_SAMPLES]));
        uint64_t s = sample_at(p, lo + p->candidate[k]);
        uint32_t to = p->proposal[p->candidate[k]];
        if (move_pays(p, s, to)) {
            move_sample(p, s, to);
            moved++;
        }
    }
    return moved;
}

int embps_partition_refine_samples(embps_partitioner *p, uint64_t lo, uint64_t hi, uint64_t *moved)
{
    if (!p || !moved)
        return fail(EMBPS_E_INVALID_ARGUMENT, "partitioner and moved are required");
    if (lo > hi || hi > p->n_samples)
        return fail(EMBPS_E_INVALID_ARGUMENT, "positions [%llu, %llu) are not within [0, %llu)",
                    (unsigned long long)lo, (unsigned long long)hi, (unsigned long long)p->n_samples);
    *moved = 0;
    for (uint64_t w = lo; w < hi; w += WINDOW) {
        uint64_t end = w + WINDOW < hi ? w + WINDOW : hi;
        propose_window(p, w, end);
        *moved += commit(p, w, end);
    }
    return EMBPS_OK;
}

/* The best owner for the row at header hd, or its owner when no move lowers the score. */
static uint32_t best_owner(const embps_partitioner *p, uint32_t hd, double *served_from, double *served_to)
{
    uint32_t from = owner_of(p, hd), best = from;
    double cap = (1.0 + p->row_slack) * p->mean_rows;
    double here = row_fetch_cost(p, hd, from);
    *served_from = row_served(p, hd, from);
    double best_change = -MIN_GAIN;
    for (uint32_t k = 0; k < p->hosts; k++) {
        if (k == from || (double)p->rows_at[k] + 1.0 > cap)
            continue;
        double served = row_served(p, hd, k);
        double change = row_fetch_cost(p, hd, k) - here
            + p->w_rows * deviation_change((double)p->rows_at[from], 1.0, (double)p->rows_at[k], 1.0, p->mean_rows)
            + p->w_load * deviation_change(p->served[from], *served_from, p->served[k], served, p->mean_load);
        if (change < best_change) {
            best_change = change;
            best = k;
            *served_to = served;
        }
    }
    return best;
}

int embps_partition_refine_rows(embps_partitioner *p, uint64_t lo, uint64_t hi, uint64_t *moved)
{
    if (!p || !moved)
        return fail(EMBPS_E_INVALID_ARGUMENT, "partitioner and moved are required");
    if (lo > hi || hi > p->n_rows)
        return fail(EMBPS_E_INVALID_ARGUMENT, "positions [%llu, %llu) are not within [0, %llu)",
                    (unsigned long long)lo, (unsigned long long)hi, (unsigned long long)p->n_rows);
    *moved = 0;
    for (uint64_t i = lo; i < hi; i++) {
        uint64_t e = (i + p->row_offset) % p->n_rows;
        if (!p->degree[e])
            continue;
        uint32_t hd = p->head[e];
        double served_from = 0.0, served_to = 0.0;
        uint32_t from = owner_of(p, hd), to = best_owner(p, hd, &served_from, &served_to);
        if (to == from)
            continue;
        set_owner(p, hd, to);
        p->rows_at[from]--;
        p->rows_at[to]++;
        p->served[from] -= served_from;
        p->served[to] += served_to;
        (*moved)++;
    }
    return EMBPS_OK;
}

/* ---- results -------------------------------------------------------------- */

int embps_partition_summarize(embps_partitioner *p, embps_partition_summary *out)
{
    if (!p || !out)
        return fail(EMBPS_E_INVALID_ARGUMENT, "partitioner and out are required");
    refresh(p);
    out->objective = objective(p);
    out->score = score(p, out->objective);
    out->rows_used = p->rows_used;
    return EMBPS_OK;
}

int embps_partition_host_stats(embps_partitioner *p, uint64_t *samples, uint64_t *rows, double *served)
{
    if (!p || !samples || !rows || !served)
        return fail(EMBPS_E_INVALID_ARGUMENT, "partitioner and output arrays are required");
    refresh(p);
    memcpy(samples, p->samples_at, p->hosts * sizeof(uint64_t));
    memcpy(rows, p->rows_at, p->hosts * sizeof(uint64_t));
    memcpy(served, p->served, p->hosts * sizeof(double));
    return EMBPS_OK;
}

int embps_partition_placement(embps_partitioner *p, uint16_t *row_owner, uint16_t *sample_host)
{
    if (!p || !row_owner || !sample_host)
        return fail(EMBPS_E_INVALID_ARGUMENT, "partitioner and output arrays are required");
    for (uint64_t e = 0; e < p->n_rows; e++)
        row_owner[e] = (uint16_t)owner_of(p, p->head[e]);
    memcpy(sample_host, p->host_of, p->n_samples * sizeof(uint16_t));
    return EMBPS_OK;
}

int embps_partition_mirror_candidates(embps_partitioner *p, uint32_t host, uint32_t *rows, double *priority,
                                      uint64_t cap, uint64_t *n)
{
    if (!p || !n || (cap && (!rows || !priority)))
        return fail(EMBPS_E_INVALID_ARGUMENT, "partitioner, n and output arrays are required");
    if (host >= p->hosts)
        return fail(EMBPS_E_INVALID_ARGUMENT, "host %u is not below hosts %u", host, p->hosts);
    refresh(p);
    uint64_t found = 0;
    for (uint64_t e = 0; e < p->n_rows; e++) {
        uint32_t hd = p->head[e], o = owner_of(p, hd);
        cell *c = o == host || !p->degree[e] ? NULL : find_slot(p, hd, host);
        if (!c)
            continue;
        if (found < cap) {
            double q = prob(p, host, c->a);
            rows[found] = (uint32_t)e;
            priority[found] = p->cost[(uint64_t)host * p->hosts + o] * q * q * (1.0 / p->degree[e] + 1.0 / c->a);
        }
        found++;
    }
    *n = found;
    if (found > cap)
        return fail(EMBPS_E_CAPACITY, "host %u has %llu mirror candidates, room for %llu", host,
                    (unsigned long long)found, (unsigned long long)cap);
    return EMBPS_OK;
}
