"""A preallocated key/value cache written by position, with an in-place `commit(path)`.

Layout: one tensor for keys and one for values, (layers, kv_heads, capacity, head_dim).
`length` slots are committed history. A forward over T new tokens writes them at slots
[length, length + T) ("pending") and attends to slots [0, length + T). `commit(path)` then keeps
the pending slots named by `path` (offsets into the pending block, root first), moves them to
[length, length + len(path)) and advances `length`; everything else pending is forgotten by being
overwritten later. Nothing is ever reallocated during decoding.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (n_layers, n_kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # per-layer views (kv_heads, capacity, head_dim): a write is then two ops, not six
        self._k = [self.k[i] for i in range(n_layers)]
        self._v = [self.v[i] for i in range(n_layers)]
        self.capacity = capacity
        self.length = 0

    def write(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (kv_heads, T, head_dim) at slots [start, start + T) (default: `length`).

        Returns the keys and values of slots [0, start + T), the span a query attends over.
        """
        start = self.length if start is None else start
        end = start + k.shape[1]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: need {end} slots, capacity is {self.capacity}")
        keys, values = self._k[layer], self._v[layer]
        keys.narrow(1, start, end - start).copy_(k)
        values.narrow(1, start, end - start).copy_(v)
        return keys.narrow(1, 0, end), values.narrow(1, 0, end)  # (kv_heads, end, head_dim)

    def commit(self, path: list[int]) -> None:
        """Keep the pending slots `length + path[i]`, moved to `length + i`, and advance."""
        n = len(path)
        if path != list(range(n)):  # a contiguous prefix is already in place
            src = torch.tensor(path, device=self.k.device) + self.length
            # gather first (the source and destination ranges can overlap), then write
            self.k[:, :, self.length : self.length + n] = self.k[:, :, src]  # (L, H, n, hd)
            self.v[:, :, self.length : self.length + n] = self.v[:, :, src]
        self.length += n

    def truncate(self, length: int) -> None:
        """Forget every slot from `length` on (a separate drafter's rollback): 0 <= length <=
        the committed length."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} slots to {length}")
        self.length = length

    def reset(self) -> None:
        self.length = 0
