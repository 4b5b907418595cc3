/* Fused optimizer kernels and deterministic row initialisation. */
#ifndef EMBPS_OPTIMIZER_H
#define EMBPS_OPTIMIZER_H

#include "embps_store.h"

#include <stdint.h>

int spec_is_valid(const embps_table_spec *spec);   /* returns a status, with message */
/* The key hash (splitmix64's finaliser); inline, as batched lookups call it once per key. */
static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
void init_row(const embps_table_spec *spec, uint64_t key, float *row);
/* new_row/new_state may alias row/state: the kernels are elementwise. */
void optimizer_step(const embps_table_spec *spec, const float *row, const float *state,
                    const float *grad, float *new_row, float *new_state);
int all_finite(const float *v, size_t n);
/* Whether the step gives a finite row and state (finite inputs can overflow), computed into trial
 * (dim + state floats) and changing nothing else. */
int optimizer_step_is_finite(const embps_table_spec *spec, uint32_t state_floats, const float *row,
                             const float *state, const float *grad, float *trial);

#endif
