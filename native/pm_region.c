/* pm_region.c -- files mapped as persistent memory: through libpmem2, or the crash simulator. */
#include "pm_region.h"

#include "status.h"

#include <errno.h>
#include <fcntl.h>
#include <libpmem2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LINE 64

struct pm_sim {
    pthread_mutex_t lock;
    uint64_t points, crash_at;
    double evict_prob;
    uint64_t rng;
    int crashed;
    pm_region *regions;         /* every region of the store, written out at the crash */
};

typedef struct { size_t lo, hi; } line_range;

struct pm_region {
    char *base;
    size_t size;
    int fd;
    /* libpmem2 mode */
    struct pmem2_map *map;
    pmem2_flush_fn flush_fn;
    pmem2_drain_fn drain_fn;
    /* simulator mode: base is the volatile view, persisted what survives a crash */
    pm_sim *sim;
    char *persisted;
    line_range *pending;
    size_t n_pending, cap_pending;
    pm_region *next;
};

/* ---- the crash simulator ------------------------------------------------- */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int pm_sim_new(uint64_t crash_at, double evict_prob, uint64_t seed, pm_sim **out)
{
    pm_sim *sim = calloc(1, sizeof(*sim));
    if (!sim)
        return fail(EMBPS_E_NOMEM, "out of memory for crash simulator");
    pthread_mutex_init(&sim->lock, NULL);
    sim->crash_at = crash_at;
    sim->evict_prob = evict_prob;
    sim->rng = seed;
    *out = sim;
    return EMBPS_OK;
}

void pm_sim_free(pm_sim *sim)
{
    if (!sim)
        return;
    pthread_mutex_destroy(&sim->lock);
    free(sim);
}

uint64_t pm_sim_points(const pm_sim *sim)
{
    return sim ? sim->points : 0;
}

static int read_whole(int fd, char *buf, size_t size)
{
    size_t done = 0;
    while (done < size) {
        ssize_t got = pread(fd, buf + done, size - done, (off_t)done);
        if (got <= 0)
            return -1;
        done += (size_t)got;
    }
    return 0;
}

static int write_whole(int fd, const char *buf, size_t size)
{
    size_t done = 0;
    while (done < size) {
        ssize_t put = pwrite(fd, buf + done, size - done, (off_t)done);
        if (put <= 0)
            return -1;
        done += (size_t)put;
    }
    return 0;
}

static int map_simulated(pm_region *r, pm_sim *sim, const char *path)
{
    r->base = malloc(r->size);
    r->persisted = malloc(r->size);
    if (!r->base || !r->persisted)
        return fail(EMBPS_E_NOMEM, "out of memory simulating %s", file_label(path));
    if (read_whole(r->fd, r->base, r->size))
        return fail(EMBPS_E_IO, "cannot read %s: %s", file_label(path), strerror(errno));
    memcpy(r->persisted, r->base, r->size);
    r->sim = sim;
    pthread_mutex_lock(&sim->lock);
    r->next = sim->regions;
    sim->regions = r;
    pthread_mutex_unlock(&sim->lock);
    return EMBPS_OK;
}

/* ---- mapping ------------------------------------------------------------- */

static void no_flush(const void *addr, size_t len)
{
    (void)addr;
    (void)len;
}

static void no_drain(void) {}

static int map_pmem2(pm_region *r, const char *path, int volatile_)
{
    struct pmem2_config *cfg = NULL;
    struct pmem2_source *src = NULL;
    int rc = EMBPS_OK, err = 0;
    if (pmem2_config_new(&cfg) || pmem2_source_from_fd(&src, r->fd) ||
        pmem2_config_set_required_store_granularity(cfg, PMEM2_GRANULARITY_PAGE) ||
        (err = pmem2_map_new(&r->map, cfg, src))) {
        /* Out of address space is the client's too-large table, not the server's fault. */
        rc = fail(err == -ENOMEM ? EMBPS_E_NOMEM : EMBPS_E_IO, "libpmem2 cannot map %s: %s", file_label(path),
                  pmem2_errormsg());
    } else {
        r->base = pmem2_map_get_address(r->map);
        r->flush_fn = volatile_ ? no_flush : pmem2_get_flush_fn(r->map);
        r->drain_fn = volatile_ ? no_drain : pmem2_get_drain_fn(r->map);
    }
    if (src)
        pmem2_source_delete(&src);
    if (cfg)
        pmem2_config_delete(&cfg);
    return rc;
}

int pm_region_map(const char *path, pm_sim *sim, int volatile_, pm_region **out)
{
    pm_region *r = calloc(1, sizeof(*r));
    if (!r)
        return fail(EMBPS_E_NOMEM, "out of memory mapping %s", file_label(path));
    r->fd = open(path, O_RDWR | O_CLOEXEC);
    struct stat st;
    int rc;
    if (r->fd < 0 || fstat(r->fd, &st)) {
        rc = fail(EMBPS_E_IO, "cannot open %s: %s", file_label(path), strerror(errno));
    } else {
        r->size = (size_t)st.st_size;
        rc = sim ? map_simulated(r, sim, path) : map_pmem2(r, path, volatile_);
    }
    if (rc) {
        pm_region_unmap(r);
        return rc;
    }
    *out = r;
    return EMBPS_OK;
}

static void sim_detach(pm_region *r)
{
    pm_sim *sim = r->sim;
    pthread_mutex_lock(&sim->lock);
    for (pm_region **p = &sim->regions; *p; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            break;
        }
    }
    /* A clean close keeps what was persisted; a crashed one already wrote its image. */
    if (!sim->crashed)
        write_whole(r->fd, r->persisted, r->size);
    pthread_mutex_unlock(&sim->lock);
}

void pm_region_unmap(pm_region *r)
{
    if (!r)
        return;
    if (r->sim) {
        sim_detach(r);
        free(r->base);
    }
    free(r->persisted);
    free(r->pending);
    if (r->map)
        pmem2_map_delete(&r->map);
    if (r->fd >= 0)
        close(r->fd);
    free(r);
}

void *pm_region_base(const pm_region *r)
{
    return r->base;
}

size_t pm_region_size(const pm_region *r)
{
    return r->size;
}

/* ---- flush and drain ----------------------------------------------------- */

void pm_flush(pm_region *r, const void *addr, size_t len)
{
    if (!r->sim) {
        r->flush_fn(addr, len);
        return;
    }
    size_t off = (size_t)((const char *)addr - r->base);
    line_range range = {off & ~(size_t)(LINE - 1), (off + len + LINE - 1) & ~(size_t)(LINE - 1)};
    if (range.hi > r->size)
        range.hi = r->size;
    pthread_mutex_lock(&r->sim->lock);
    if (r->n_pending == r->cap_pending) {
        size_t cap = r->cap_pending ? 2 * r->cap_pending : 64;
        line_range *grown = realloc(r->pending, cap * sizeof(*grown));
        if (!grown)
            abort();  /* the simulator is a test tool; running out of memory there is fatal */
        r->pending = grown;
        r->cap_pending = cap;
    }
    r->pending[r->n_pending++] = range;
    pthread_mutex_unlock(&r->sim->lock);
}

/* The power fails: every region keeps its persisted image plus, with the
 * configured probability, each line that differs from it. */
static void sim_crash(pm_sim *sim)
{
    sim->crashed = 1;
    for (pm_region *r = sim->regions; r; r = r->next) {
        for (size_t off = 0; off < r->size; off += LINE) {
            size_t len = r->size - off < LINE ? r->size - off : LINE;
            if (memcmp(r->base + off, r->persisted + off, len) == 0)
                continue;
            double u = (double)(splitmix(&sim->rng) >> 11) / 9007199254740992.0;
            if (u < sim->evict_prob)
                memcpy(r->persisted + off, r->base + off, len);
        }
        write_whole(r->fd, r->persisted, r->size);
    }
}

int pm_drain(pm_region *r)
{
    if (!r->sim) {
        r->drain_fn();
        return EMBPS_OK;
    }
    pm_sim *sim = r->sim;
    int rc = EMBPS_OK;
    pthread_mutex_lock(&sim->lock);
    if (!sim->crashed && ++sim->points == sim->crash_at)
        sim_crash(sim);
    if (sim->crashed) {
        rc = fail(EMBPS_E_CRASHED, "simulated power failure at persist point %llu",
                  (unsigned long long)sim->crash_at);
    } else {
        for (size_t i = 0; i < r->n_pending; i++)
            memcpy(r->persisted + r->pending[i].lo, r->base + r->pending[i].lo,
                   r->pending[i].hi - r->pending[i].lo);
    }
    r->n_pending = 0;
    pthread_mutex_unlock(&sim->lock);
    return rc;
}
