"""FGCNN (Liu et al., 2019): a CNN over the stacked field embeddings generates new features, which join
the raw ones in an IPNN-style head (pairwise inner products + embeddings -> MLP)."""

from collections.abc import Sequence

import torch
from torch import nn

from embps.models.layers import PairwiseDots, check_inputs, mlp


class FeatureGeneration(nn.Module):
    """One convolution + pooling + recombination layer of the feature-generation CNN.

    Input: feature maps [B, channels_in, fields, dim].  A (kernel x 1) convolution along the field axis
    ("same" padding, tanh), then (pool x 1) max pooling (ceil mode, so a short field axis never pools to
    nothing) give [B, channels, fields', dim]; the recombination, a fully connected tanh layer over all of
    it, makes `new_maps * fields'` new features of `dim` each.  Returns (pooled maps for the next layer,
    new features [B, new_maps * fields', dim])."""

    def __init__(self, channels_in: int, channels: int, fields: int, dim: int, kernel: int, pool: int,
                 new_maps: int):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels, (kernel, 1), padding=(kernel // 2, 0))
        self.pool = nn.MaxPool2d((pool, 1), ceil_mode=True)
        self.fields_out = -(-fields // pool)
        self.dim, self.new_maps = dim, new_maps
        self.recombine = nn.Linear(channels * self.fields_out * dim, new_maps * self.fields_out * dim)

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # an even kernel pads one field more than it consumes; drop it so the field count is kept
        pooled = self.pool(torch.tanh(self.conv(maps))[:, :, :maps.shape[2]])
        new = torch.tanh(self.recombine(pooled.flatten(1)))
        return pooled, new.view(-1, self.new_maps * self.fields_out, self.dim)


class FGCNN(nn.Module):
    """Fields: the dense features mapped by Linear(n_dense -> dim) to one more field (Criteo's integer
    columns are bucketised into categorical fields in the paper; here they stay dense), then the n_tables
    embedding rows.  Feature generation layer i has conv_channels[i] channels, kernel height `kernel`,
    pooling `pool` and new_maps[i] recombined maps.  The head sees the raw and the generated fields: the
    inner products of every pair of them (strictly lower triangle) concatenated with them all flattened,
    through the MLP deep... -> 1 (the paper's IPNN, without its dropout and BatchNorm)."""

    def __init__(self, n_dense: int, n_tables: int, dim: int, conv_channels: Sequence[int] = (6, 8),
                 kernel: int = 7, pool: int = 2, new_maps: Sequence[int] = (1, 1),
                 deep: Sequence[int] = (256, 128)):
        super().__init__()
        if len(conv_channels) != len(new_maps) or not conv_channels:
            raise ValueError(f"conv_channels {tuple(conv_channels)} and new_maps {tuple(new_maps)} need one "
                             "entry per feature generation layer (at least one)")
        self.n_dense, self.n_tables, self.dim = n_dense, n_tables, dim
        self.dense_field = nn.Linear(n_dense, dim)
        layers, channels_in, fields = [], 1, n_tables + 1
        for channels, maps in zip(conv_channels, new_maps):
            layers.append(FeatureGeneration(channels_in, channels, fields, dim, kernel, pool, maps))
            channels_in, fields = channels, layers[-1].fields_out
        self.generation = nn.ModuleList(layers)
        n_fields = n_tables + 1 + sum(layer.new_maps * layer.fields_out for layer in layers)
        self.interaction = PairwiseDots(n_fields)
        self.deep = mlp(n_fields * dim + self.interaction.n_pairs, [*deep, 1])

    def forward(self, dense: torch.Tensor, embs: torch.Tensor) -> torch.Tensor:
        check_inputs(dense, embs, self.n_dense, self.n_tables, self.dim)
        raw = torch.cat([self.dense_field(dense).unsqueeze(1), embs], dim=1)   # [B, fields, dim]
        maps, fields = raw.unsqueeze(1), [raw]
        for layer in self.generation:
            maps, new = layer(maps)
            fields.append(new)
        x = torch.cat(fields, dim=1)                                          # [B, all fields, dim]
        products = self.interaction(x)
        return self.deep(torch.cat([x.flatten(1), products], dim=1)).squeeze(1)
