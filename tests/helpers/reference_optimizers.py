"""Plain numpy optimizers: the reference the native kernels must match (PyTorch's formulas)."""

import numpy as np


def step(kind: str, row, state, grad, lr=0.1, eps=1e-8, beta1=0.9, beta2=0.999):
    """One update of a single row; returns (new_row, new_state) in float32."""
    row, state, grad = (np.asarray(a, np.float32) for a in (row, state, grad))
    lr, eps = np.float32(lr), np.float32(eps)
    dim = len(row)
    if kind == "sgd":
        return row - lr * grad, state
    if kind == "adagrad":
        s = state + grad * grad
        return row - lr * grad / (np.sqrt(s) + eps), s
    if kind == "rowwise_adagrad":
        s = state + np.float32(np.sum(grad * grad, dtype=np.float32) / np.float32(dim))
        return row - (lr / (np.sqrt(s[0]) + eps)) * grad, s
    if kind == "adam":
        t = state[2 * dim] + 1
        m = state[:dim] + np.float32(1 - beta1) * (grad - state[:dim])     # torch: exp_avg.lerp_(grad, 1 - beta1)
        v = np.float32(beta2) * state[dim:2 * dim] + np.float32(1 - beta2) * grad * grad
        step_size = np.float32(lr / (1 - beta1 ** float(t)))
        bc2 = np.float32(np.sqrt(1 - beta2 ** float(t)))
        new_row = row - step_size * m / (np.sqrt(v) / bc2 + eps)
        return new_row, np.concatenate([m, v, [t]]).astype(np.float32)
    raise ValueError(kind)


def sum_repeated(idx: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct indices, their gradients summed in input order), as a table's Update combines repeats."""
    uniq, inverse = np.unique(idx, return_inverse=True)
    summed = np.zeros((len(uniq), grads.shape[1]), np.float32)
    np.add.at(summed, inverse, grads)
    return uniq, summed
