"""Single-process training of a model together with its embedding tables, in plain PyTorch."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .row_step_adam import RowStepAdam

EMB_OPTIMIZERS = ("sgd", "adagrad", "adam")
DENSE_OPTIMIZERS = ("sgd", "adam", "adagrad")


class LocalTrainer:
    """Trains model + embedding tables in one process with plain PyTorch: the reference that the distributed
    sync mode must match, and the single-machine speed limit.

    Table i is an nn.Embedding(rows_i, dim, sparse=True) initialised with a copy of tables[i]; sample b
    looks up row sparse[b, i] of it. Its gradient is sparse, and the rows an id appears on more than once
    in a batch get the sum of their gradients. The embedding optimizer is torch.optim.SGD(lr=emb_lr),
    torch.optim.Adagrad(lr=emb_lr, eps=emb_eps, lr_decay=0, weight_decay=0, initial_accumulator_value=0)
    or RowStepAdam(lr=emb_lr, betas=emb_betas, eps=emb_eps), which for a row r with summed gradient g do
        sgd:      w[r] -= lr * g
        adagrad:  s[r] += g * g;   w[r] -= lr * g / (sqrt(s[r]) + eps)
        adam:     Adam with the row's own step count t[r], which only the row's updates advance
                  (embps.models.row_step_adam)
    and leave rows the batch does not touch alone. The dense optimizer updates the model's parameters:
    torch.optim.SGD(lr), torch.optim.Adam(lr) with default betas and eps, or torch.optim.Adagrad(lr).

    threads, when given, is passed to torch.set_num_threads (a process-wide setting).
    """

    def __init__(self, model: nn.Module, tables: list[np.ndarray], emb_optimizer: str, emb_lr: float,
                 emb_eps: float, dense_optimizer: str = "adam", dense_lr: float = 1e-3,
                 threads: int | None = None, emb_betas: tuple[float, float] = (0.9, 0.999)):
        if emb_optimizer not in EMB_OPTIMIZERS:
            raise ValueError(f"emb_optimizer must be one of {EMB_OPTIMIZERS}, got {emb_optimizer!r}")
        if dense_optimizer not in DENSE_OPTIMIZERS:
            raise ValueError(f"dense_optimizer must be one of {DENSE_OPTIMIZERS}, got {dense_optimizer!r}")
        if not tables:
            raise ValueError("need at least one table")
        dims = {np.shape(t)[1] if np.ndim(t) == 2 else None for t in tables}
        if len(dims) != 1 or None in dims:
            raise ValueError("tables must all be 2-D [rows, dim] with the same dim")
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = model
        self.emb_optimizer_name = emb_optimizer
        # torch.tensor copies: the caller's arrays stay as they are
        self.embeddings = [nn.Embedding.from_pretrained(torch.tensor(np.asarray(t, dtype=np.float32)), freeze=False,
                                                        sparse=True) for t in tables]
        emb_params = [emb.weight for emb in self.embeddings]
        if emb_optimizer == "sgd":
            self.emb_opt: torch.optim.Optimizer = torch.optim.SGD(emb_params, lr=emb_lr)
        elif emb_optimizer == "adam":
            self.emb_opt = RowStepAdam(emb_params, lr=emb_lr, betas=emb_betas, eps=emb_eps)
        else:
            self.emb_opt = torch.optim.Adagrad(emb_params, lr=emb_lr, eps=emb_eps, lr_decay=0,
                                               weight_decay=0, initial_accumulator_value=0)
        dense_params = list(model.parameters())
        if dense_optimizer == "sgd":
            self.dense_opt: torch.optim.Optimizer = torch.optim.SGD(dense_params, lr=dense_lr)
        elif dense_optimizer == "adam":
            self.dense_opt = torch.optim.Adam(dense_params, lr=dense_lr)
        else:
            self.dense_opt = torch.optim.Adagrad(dense_params, lr=dense_lr)

    @property
    def n_tables(self) -> int:
        return len(self.embeddings)

    def _lookup(self, sparse: np.ndarray) -> torch.Tensor:
        ids = torch.as_tensor(np.asarray(sparse, dtype=np.int64))
        if ids.dim() != 2 or ids.shape[1] != self.n_tables:
            raise ValueError(f"sparse must be [B, {self.n_tables}] ids, got {list(ids.shape)}")
        return torch.stack([emb(ids[:, i]) for i, emb in enumerate(self.embeddings)], dim=1)

    @staticmethod
    def _dense(dense: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(dense, dtype=np.float32))

    def step(self, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray) -> float:
        """One step on a global batch: mean BCE-with-logits loss, backward, both optimizers step.
        Returns the loss before the update."""
        self.model.train()
        self.emb_opt.zero_grad(set_to_none=True)
        self.dense_opt.zero_grad(set_to_none=True)
        logits = self.model(self._dense(dense), self._lookup(sparse))
        target = torch.as_tensor(np.asarray(labels, dtype=np.float32)).reshape(logits.shape)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        loss.backward()
        # torch's sparse Adagrad builds COO tensors from the coalesced gradient it made itself; opting out of
        # the invariant checks explicitly (the default, but implicit, warns on every step).
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            self.emb_opt.step()
        self.dense_opt.step()
        return loss.item()

    @torch.no_grad()
    def predict(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """Click probabilities [B] (float32), with no gradient and no update."""
        self.model.eval()
        return torch.sigmoid(self.model(self._dense(dense), self._lookup(sparse))).numpy()

    def table(self, i: int) -> np.ndarray:
        """A copy of table i's current weights [rows, dim]."""
        return self.embeddings[i].weight.detach().numpy().copy()

    def table_state(self, i: int) -> np.ndarray | None:
        """A copy of table i's optimizer state as the native store lays it out: Adagrad's state_sum
        [rows, dim], Adam's m, v and step count [rows, 2 * dim + 1]; None for sgd."""
        if isinstance(self.emb_opt, RowStepAdam):
            return self.emb_opt.row_state(self.embeddings[i].weight).numpy().copy()
        if self.emb_optimizer_name != "adagrad":
            return None
        return self.emb_opt.state[self.embeddings[i].weight]["sum"].detach().numpy().copy()
