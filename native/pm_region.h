/*
 * A file mapped as persistent memory, through libpmem2, or through the crash
 * simulator, in which stores stay volatile until flushed and drained.
 */
#ifndef EMBPS_PM_REGION_H
#define EMBPS_PM_REGION_H

#include <stddef.h>
#include <stdint.h>

typedef struct pm_sim pm_sim;
typedef struct pm_region pm_region;

int pm_sim_new(uint64_t crash_at, double evict_prob, uint64_t seed, pm_sim **out);
void pm_sim_free(pm_sim *sim);
uint64_t pm_sim_points(const pm_sim *sim);

/* sim == NULL maps the file with libpmem2; volatile_ makes flushes and drains no-ops (for caches,
 * which need the mapping but not persistence). */
int pm_region_map(const char *path, pm_sim *sim, int volatile_, pm_region **out);
void pm_region_unmap(pm_region *r);
void *pm_region_base(const pm_region *r);
size_t pm_region_size(const pm_region *r);

/* Starts writing [addr, addr+len) back; persistent only after pm_drain. */
void pm_flush(pm_region *r, const void *addr, size_t len);
/* A persist point.  Returns EMBPS_E_CRASHED once the simulator has crashed. */
int pm_drain(pm_region *r);

#endif
