/*
 * Recovery of one table: its index's DRAM side (tags, counts, overflow counters) and its slab
 * allocator, rebuilt from the slots in PM.  The rows are never read.  Bucket ranges are restored
 * by several threads at once; the result, and the corruption reported, do not depend on how many.
 */
#ifndef EMBPS_RECOVERY_H
#define EMBPS_RECOVERY_H

#include "pethash.h"
#include "slab_pool.h"

/* ph and pool freshly initialised over the table's PM; name is the table's, for messages.  Sets
 * *rows to the live slots found.  EMBPS_E_CORRUPT if a slot holds an impossible entry (the reserved
 * key, a ref beyond the pool), two slots share a slab or a key; EMBPS_E_NOMEM. */
int recovery_rebuild(pethash *ph, slab_pool *pool, const char *name, uint64_t *rows);

#endif
