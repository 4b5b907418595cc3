/*
 * embps native partitioner: HET-GMP-style placement of samples and embedding rows over hosts.
 *
 * The graph is bipartite: every training sample uses `width` rows (row indices in [0, n_rows)).
 * A placement puts each sample and each row on a host.  Its objective is the expected number of
 * distinct remote rows the hosts fetch per iteration, weighted by link cost:
 *
 *     sum over hosts h, rows e not owned by h, with c = c[h][e] > 0:
 *         link_cost[h][owner(e)] * (1 - (1 - c / M_h)^B)
 *
 * where c[h][e] counts h's samples that use e, M_h is h's number of samples and B the per-host
 * batch (a row used by c >= M_h of them is in every batch: it scores 1).  Refinement is greedy
 * local search, sample moves then row moves, each a strict improvement of the objective plus
 * quadratic balance terms (samples per host, rows per host, the remote-fetch load each host
 * serves), under hard caps on samples and rows per host.
 *
 * Memory: the edges (borrowed); per row 8 bytes of header, 8 per counter slot (min(hosts, degree)
 * slots) and 8 of degree and header index; 2 per sample; the tables of fetch probabilities and of
 * their steps (at most 64 MiB each).  While create counts degrees, 4 more per row for each thread
 * beyond the first.
 *
 * Deterministic: samples and rows are visited in an order fixed by the seed and the round; sample
 * sweeps take windows of samples, for which threads propose moves against the placement as it is
 * at the window's start, and one thread applies them in order, re-checked.  Equal inputs give equal
 * placements, bit for bit, with any number of threads.  Counters are sparse: each row keeps at most
 * min(hosts, degree) (host, count) pairs, never a dense hosts x rows array.
 *
 * Every call returns an embps_status (embps_errormsg() says why it failed).  One partitioner is
 * used by one caller at a time.
 */
#ifndef EMBPS_PARTITIONER_H
#define EMBPS_PARTITIONER_H

#include "embps_store.h"

#include <stdint.h>

#define EMBPS_PARTITION_MAX_HOSTS 65536u

typedef struct embps_partitioner embps_partitioner;

typedef struct {
    uint64_t n_samples;
    uint32_t width;                 /* rows per sample */
    uint64_t n_rows;                /* row indices are < n_rows, and n_rows < 2^32 */
    /* n_samples x width row indices.  Borrowed: the partitioner rewrites them in place into its own
     * indexing (so that one cache line gives a row's owner and counts) and destroy restores them. */
    uint32_t *edges;
    uint32_t hosts;                 /* 1 .. EMBPS_PARTITION_MAX_HOSTS */
    const double *link_cost;        /* hosts x hosts, row = fetching host; finite, >= 0 (copied) */
    uint32_t batch;                 /* B: samples per host per iteration, >= 1 */
    uint64_t seed;                  /* fixes the visiting order of every round */
    const uint16_t *row_owner;      /* n_rows starting owners (copied) */
    const uint16_t *sample_host;    /* n_samples starting hosts (copied) */
    /* Balance weights: each term is weight * objective_scale * sum over hosts of the squared
     * relative deviation from the mean; objective_scale is the starting objective. */
    double sample_balance, row_balance, load_balance;
    /* Hard caps: no move makes a host hold more than (1 + slack) x the mean of samples or rows. */
    double sample_slack, row_slack;
    /* Threads of the sample sweeps (0 or 1: the caller's alone; at most 64).  The placement is the
     * same bit for bit whatever the number. */
    uint32_t threads;
} embps_partition_config;

typedef struct {
    double objective;               /* the link-cost-weighted expected remote rows per iteration */
    double score;                   /* objective plus the balance terms */
    uint64_t rows_used;             /* rows with degree > 0 */
} embps_partition_summary;

/* Validates the config (INVALID_ARGUMENT names the field), counts degrees and builds the sparse
 * counters of the starting placement.  NOMEM when memory runs out. */
EMBPS_API int embps_partition_create(const embps_partition_config *cfg, embps_partitioner **out);
EMBPS_API void embps_partition_destroy(embps_partitioner *p);

/* Starts a sweep (over samples or over rows) of refinement round `round`: refreshes host sizes,
 * fetch probabilities, loads and their means as the placement is now, and fixes the round's
 * visiting order.  Call it before each sweep: the balance terms are relative to these means. */
EMBPS_API int embps_partition_begin_sweep(embps_partitioner *p, uint32_t round);
/* Visits positions [lo, hi) of this round's sample order (positions < n_samples), moving each
 * visited sample to the host that lowers the score most; *moved counts the moves.  Chunks let the
 * caller show progress; a sweep visits every position once, in increasing chunks. */
EMBPS_API int embps_partition_refine_samples(embps_partitioner *p, uint64_t lo, uint64_t hi, uint64_t *moved);
/* The same for rows: positions [lo, hi) of this round's row order (positions < n_rows). */
EMBPS_API int embps_partition_refine_rows(embps_partitioner *p, uint64_t lo, uint64_t hi, uint64_t *moved);

/* The exact objective and score of the current placement (host sizes as they are now). */
EMBPS_API int embps_partition_summarize(embps_partitioner *p, embps_partition_summary *out);
/* Per host: samples, rows used (degree > 0) and expected rows it serves to others per iteration. */
EMBPS_API int embps_partition_host_stats(embps_partitioner *p, uint64_t *samples, uint64_t *rows,
                                         double *served);
/* The current placement: n_rows owners, n_samples hosts. */
EMBPS_API int embps_partition_placement(embps_partitioner *p, uint16_t *row_owner, uint16_t *sample_host);
/* The rows `host` uses but does not own, with HET-GMP's mirror priority
 *     link_cost[host][owner] * p^2 * (1/degree + 1/c),  p = 1 - (1 - c/M)^B
 * into rows[] and priority[] (room for cap entries), in row order; *n is their number.  With cap
 * too small, CAPACITY and *n is the number needed. */
EMBPS_API int embps_partition_mirror_candidates(embps_partitioner *p, uint32_t host, uint32_t *rows,
                                                double *priority, uint64_t cap, uint64_t *n);

#endif
