/* optimizer.c -- fused optimizer kernels, deterministic row initialisation and spec checks. */
#include "optimizer.h"

#include "status.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

uint32_t embps_optimizer_state_floats(uint32_t optimizer, uint32_t dim)
{
    switch (optimizer) {
    case EMBPS_OPT_ADAGRAD: return dim;
    case EMBPS_OPT_ROWWISE_ADAGRAD: return 1;
    case EMBPS_OPT_ADAM: return 2 * dim + 1;   /* m, v, and the row's step count */
    default: return 0;
    }
}

/* Far beyond any useful learning rate, epsilon or initial scale, and far below the float range the
 * kernels compute in (a larger lr, as a float, is Inf). */
#define HYPER_MAX 1e6

static int in_range(double x)
{
    return x >= 0 && x <= HYPER_MAX;   /* false for NaN */
}

int spec_is_valid(const embps_table_spec *s)
{
    if (s->dim == 0 || s->dim > 65536)
        return fail(EMBPS_E_INVALID_ARGUMENT, "dim must be in 1..65536, got %u", s->dim);
    if (s->capacity == 0 || s->capacity > (1ull << 36))
        return fail(EMBPS_E_INVALID_ARGUMENT, "capacity must be in 1..2^36 rows, got %llu",
                    (unsigned long long)s->capacity);
    if (s->optimizer > EMBPS_OPT_ADAM)
        return fail(EMBPS_E_INVALID_ARGUMENT, "unknown optimizer %u", s->optimizer);
    if (s->init > EMBPS_INIT_NORMAL)
        return fail(EMBPS_E_INVALID_ARGUMENT, "unknown initializer %u", s->init);
    if (s->missing > EMBPS_MISSING_REPORT)
        return fail(EMBPS_E_INVALID_ARGUMENT, "unknown missing-keys policy %u", s->missing);
    if (!in_range(s->lr) || !in_range(s->eps) || !in_range(s->init_scale))
        return fail(EMBPS_E_INVALID_ARGUMENT, "lr, eps and init_scale must be finite and in [0, %g], got %g, %g "
                    "and %g", HYPER_MAX, s->lr, s->eps, s->init_scale);
    if (!(s->beta1 >= 0 && s->beta1 < 1 && s->beta2 >= 0 && s->beta2 < 1))
        return fail(EMBPS_E_INVALID_ARGUMENT, "adam betas must be in [0, 1), got %g and %g", s->beta1, s->beta2);
    return EMBPS_OK;
}

static float unit_float(uint64_t bits)  /* [0, 1) from the top 24 bits */
{
    return (float)(bits >> 40) * (1.0f / 16777216.0f);
}

/* Depends only on (seed, key, column), so every shard initialises a key alike. */
void init_row(const embps_table_spec *spec, uint64_t key, float *row)
{
    uint64_t base = mix64(key ^ mix64(spec->init_seed + 0x632BE59BD9B4E019ull));
    for (uint32_t j = 0; j < spec->dim; j++) {
        uint64_t bits = mix64(base + (uint64_t)j * 0x9E3779B97F4A7C15ull);
        if (spec->init == EMBPS_INIT_UNIFORM) {
            row[j] = (2.0f * unit_float(bits) - 1.0f) * (float)spec->init_scale;
        } else if (spec->init == EMBPS_INIT_NORMAL) {
            float u1 = unit_float(bits) + (1.0f / 33554432.0f);   /* never 0 */
            float u2 = unit_float(mix64(bits));
            row[j] = sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2) * (float)spec->init_scale;
        } else {
            row[j] = 0.0f;
        }
    }
}

int all_finite(const float *v, size_t n)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], 4);
        bad |= ((bits & 0x7F800000u) == 0x7F800000u);   /* exponent all ones: Inf or NaN */
    }
    return !bad;
}

void optimizer_step(const embps_table_spec *spec, const float *row, const float *state,
                    const float *grad, float *new_row, float *new_state)
{
    const uint32_t dim = spec->dim;
    const float lr = (float)spec->lr, eps = (float)spec->eps;
    switch (spec->optimizer) {
    case EMBPS_OPT_SGD:
        for (uint32_t j = 0; j < dim; j++)
            new_row[j] = row[j] - lr * grad[j];
        break;
    case EMBPS_OPT_ADAGRAD:
        for (uint32_t j = 0; j < dim; j++) {
            float s = state[j] + grad[j] * grad[j];
            new_state[j] = s;
            new_row[j] = row[j] - lr * grad[j] / (sqrtf(s) + eps);
        }
        break;
    case EMBPS_OPT_ROWWISE_ADAGRAD: {
        float sq = 0.0f;
        for (uint32_t j = 0; j < dim; j++)
            sq += grad[j] * grad[j];
        float s = state[0] + sq / (float)dim;
        float step = lr / (sqrtf(s) + eps);
        new_state[0] = s;
        for (uint32_t j = 0; j < dim; j++)
            new_row[j] = row[j] - step * grad[j];
        break;
    }
    case EMBPS_OPT_ADAM: {
        /* Per-row step count: a row's bias correction advances only when it is updated.
         * Scalars are computed in double and rounded once, as torch.optim.Adam does. */
        float t = state[2 * dim] + 1.0f;
        float step_size = (float)(spec->lr / (1.0 - pow(spec->beta1, t)));
        float bc2_sqrt = (float)sqrt(1.0 - pow(spec->beta2, t));
        const float w1 = (float)(1.0 - spec->beta1), b2 = (float)spec->beta2, w2 = (float)(1.0 - spec->beta2);
        for (uint32_t j = 0; j < dim; j++) {
            float m = state[j] + w1 * (grad[j] - state[j]);
            float v = b2 * state[dim + j] + w2 * grad[j] * grad[j];
            new_state[j] = m;
            new_state[dim + j] = v;
            new_row[j] = row[j] - step_size * m / (sqrtf(v) / bc2_sqrt + eps);
        }
        new_state[2 * dim] = t;
        break;
    }
    }
}

int optimizer_step_is_finite(const embps_table_spec *spec, uint32_t state_floats, const float *row,
                             const float *state, const float *grad, float *trial)
{
    optimizer_step(spec, row, state, grad, trial, trial + spec->dim);
    return all_finite(trial, spec->dim + state_floats);
}

int embps_initializer_fill(const embps_table_spec *spec, const uint64_t *keys, size_t n, float *rows_out,
                           size_t rows_len)
{
    int rc = spec_is_valid(spec);
    if (rc)
        return rc;
    if (rows_len != n * spec->dim)
        return fail(EMBPS_E_INVALID_ARGUMENT, "rows buffer holds %zu floats, %zu keys x dim %u need %zu",
                    rows_len, n, spec->dim, n * spec->dim);
    for (size_t i = 0; i < n; i++)
        init_row(spec, keys[i], rows_out + i * spec->dim);
    return EMBPS_OK;
}

int embps_optimizer_apply(const embps_table_spec *spec, float *rows, float *state, const float *grads, size_t n)
{
    int rc = spec_is_valid(spec);
    if (rc)
        return rc;
    size_t dim = spec->dim, sf = embps_optimizer_state_floats(spec->optimizer, spec->dim);
    if (!all_finite(grads, n * dim))
        return fail(EMBPS_E_NONFINITE, "gradients contain NaN or Inf; nothing was applied");
    float *trial = malloc((dim + sf) * sizeof(float));
    if (!trial)
        return fail(EMBPS_E_NOMEM, "out of memory for a row of dim %zu", dim);
    for (size_t i = 0; i < n && !rc; i++)
        if (!optimizer_step_is_finite(spec, (uint32_t)sf, rows + i * dim, state + i * sf, grads + i * dim, trial))
            rc = fail(EMBPS_E_NONFINITE, "the step would give row %zu NaN or Inf (a square or step overflowed); "
                      "nothing was applied", i);
    free(trial);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++)
        optimizer_step(spec, rows + i * dim, state + i * sf, grads + i * dim, rows + i * dim, state + i * sf);
    return EMBPS_OK;
}
