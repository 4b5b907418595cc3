"""The trainer's side of the training path, in the spirit of Bagpipe's API:

    cache = init_cache(gateway_address, grad_scale=local_batch / global_batch)
    while (batch := cache.next_batch()) is not None:
        embs = cache.get_emb(batch)                 # [samples, features, dim], on the autograd tape
        loss = loss_fn(model(batch.dense, embs), batch.labels)
        loss.backward()                             # embedding gradients go to the gateway from here
        dense_optimizer.step()
    cache.finish()

Embedding gradients are pushed from a hook on the batch's rows while the rest of backward (and DDP's
all-reduce of dense gradients) goes on, and the gateway answers the push with the next batch (one call,
not two), while the trainer's optimizer steps; next_batch() waits for that answer.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
import torch
from torch import nn

from embps.api import wire
from embps.common.grpc_channels import TRAINING_MAX_MESSAGE_BYTES, channel_options
from embps.common.job_config import feature_keys
from embps.common.security import NO_SECURITY, Security
from embps.v1 import training_pb2 as pb
from embps.v1 import training_pb2_grpc as pb_grpc

from .errors import ShardError



@dataclass
class Batch:
    number: int
    dense: torch.Tensor      # [samples, n_dense]
    sparse: np.ndarray       # [samples, features] ids
    labels: torch.Tensor     # [samples]
    keys: np.ndarray         # distinct shard keys of the batch
    rows: torch.Tensor       # their rows [keys, dim], a leaf that collects their gradient
    inverse: torch.Tensor    # [samples, features]: each sample's key index in keys


class GatewayCache:
    def __init__(self, address: str, grad_scale: float, timeout: float = 300.0, security: Security = NO_SECURITY):
        self.address, self.grad_scale, self.timeout = address, grad_scale, timeout
        self._channel = security.channel(address, channel_options(TRAINING_MAX_MESSAGE_BYTES))
        self._stub = pb_grpc.TrainerGatewayStub(self._channel)
        self._pusher = ThreadPoolExecutor(1, thread_name_prefix="push")
        self._push: Future | None = None
        self._current: Batch | None = None

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout, wait_for_ready=True)
        except grpc.RpcError as error:
            raise ShardError.from_rpc_error(error, self.address) from None

    def next_batch(self) -> Batch | None:
        """The next batch and its rows, or None when the stream is done."""
        reply = self._finish_push()
        if reply is None:
            reply = self._call(self._stub.NextBatch, pb.NextBatchRequest())
        if reply.done:
            return None
        got = reply.batch
        f = got.features
        keys = wire.keys_from_bytes(got.keys)
        rows = torch.from_numpy(wire.rows_from_bytes(got.rows, len(keys)).copy()).requires_grad_()
        inverse = torch.from_numpy(np.frombuffer(got.inverse, np.int32).reshape(f.samples, -1).astype(np.int64))
        batch = Batch(number=got.batch,
                      dense=torch.from_numpy(np.frombuffer(f.dense, np.float32).reshape(f.samples, -1).copy()),
                      sparse=np.frombuffer(f.sparse, np.int64).reshape(f.samples, -1),
                      labels=torch.from_numpy(np.frombuffer(f.labels, np.float32).copy()),
                      keys=keys, rows=rows, inverse=inverse)
        rows.register_hook(lambda grad: self._start_push(batch, grad))
        self._current = batch
        return batch

    def get_emb(self, ids) -> torch.Tensor:
        """Embeddings of the current batch's ids, [samples, features, dim], on the autograd tape
        (backward sends their gradient).  ids: the Batch itself, or an id matrix drawn from it (as
        Bagpipe's get_emb takes), e.g. a subset of its samples."""
        if isinstance(ids, Batch):   # index_select: the same bits as rows[inverse], both ways, at half the cost
            return ids.rows.index_select(0, ids.inverse.view(-1)).view(*ids.inverse.shape, -1)
        batch = self._current
        if batch is None:
            raise RuntimeError("get_emb: no current batch (call next_batch first)")
        keys = feature_keys(np.asarray(ids, np.int64))
        pos = np.searchsorted(batch.keys, keys).clip(max=len(batch.keys) - 1)
        if not np.array_equal(batch.keys[pos], keys):
            raise KeyError("get_emb: ids that are not in the current batch")
        return batch.rows[torch.from_numpy(pos.astype(np.int64))]

    def _start_push(self, batch: Batch, grad: torch.Tensor) -> None:
        grads = (grad.detach() * self.grad_scale).numpy().astype(np.float32, copy=False)
        request = pb.PushGradientsRequest(batch=batch.number, keys=batch.keys.tobytes(), grads=grads.tobytes(),
                                          then_next_batch=True)
        self._push = self._pusher.submit(self._call, self._stub.PushGradients, request)

    def _finish_push(self) -> pb.NextBatchResponse | None:
        """Waits for the last push; returns the next batch that came with its answer (None: no push, or a
        gateway older than then_next_batch, whose answer is empty: next_batch asks it then)."""
        if self._push is None:
            return None
        push, self._push = self._push, None
        answer = push.result()
        return answer.next if answer.HasField("next") else None

    def finish(self) -> pb.GatewayStats:
        """Writes every cached row back to the shards (all gateways); returns this gateway's traffic."""
        self._finish_push()
        return self._call(self._stub.Finish, pb.FinishRequest()).stats

    def close(self) -> None:
        self._pusher.shutdown(wait=True)
        self._channel.close()


def init_cache(gateway_address: str, grad_scale: float = 1.0, timeout: float = 300.0,
               security: Security = NO_SECURITY) -> GatewayCache:
    """grad_scale: this trainer's share of the global batch (local / global samples), so that summed
    over trainers the embedding gradients are those of the global batch's mean loss, as DDP's
    averaged dense gradients are."""
    return GatewayCache(gateway_address, grad_scale, timeout, security)


class RemoteEmbeddings(nn.Module):
    """The embedding layer of a model whose tables live on the parameter servers."""

    def __init__(self, cache: GatewayCache):
        super().__init__()
        self.cache = cache

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.cache.get_emb(batch)
