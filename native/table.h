/* One table: a file holding a header, the PetHash buckets and the slab pool. */
#ifndef EMBPS_TABLE_H
#define EMBPS_TABLE_H

#include "embps_store.h"
#include "pm_region.h"

/* Creates a table file with an empty index (zeroed pages) and its header; spec has been validated. */
int table_create_file(const char *path, const char *name, const embps_table_spec *spec);
/* Maps a table file and rebuilds its DRAM state from PM (recovery). */
int table_open(const char *path, pm_sim *sim, int volatile_, embps_table **out);
void table_close(embps_table *t);
const char *table_name(const embps_table *t);
/* EMBPS_OK if name (len bytes; a NUL among them makes it invalid) may name a table: [A-Za-z0-9_.-]{1,63},
 * not starting with '.', as it names a file in the store's directory; else EMBPS_E_INVALID_ARGUMENT. */
int table_name_check(const char *name, size_t len);
/* What a lookup returns for a key not in the table (by the table's missing-keys policy). */
void table_missing_row(const embps_table *t, uint64_t key, float *row);

#endif
