"""Per-step records kept on the device and copied to the host in blocks, without a sync per step.

:class:`StepBuffer` holds two device blocks of ``rows`` records each. ``push`` writes one record
into the current block with device-side copies only. When a block is full it is copied to pinned
host memory asynchronously (``non_blocking``), an event is recorded, and writing continues in
the other block; the host reads the copy when that block fills next, by which time the copy is
long finished. The only waits are at :meth:`StepBuffer.flush` (checkpoints, the end of a run).
"""

from __future__ import annotations

import numpy as np
import torch


class StepBuffer:
    def __init__(self, fields: dict[str, tuple[tuple[int, ...], torch.dtype]], rows: int, device: torch.device | str,
                 on_host=None):
        """`on_host(block)`, if given, is called with every block of records (``{field: array}``) as it lands on the
        host, in order: a live consumer (a planner) sees the records without a sync of its own."""
        if rows < 1:
            raise ValueError("rows must be >= 1")
        self.fields = dict(fields)
        self.rows = rows
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.dev = [
            {k: torch.zeros((rows, *shape), dtype=dt, device=self.device) for k, (shape, dt) in self.fields.items()}
            for _ in range(2)
        ]
        self.pinned = (
            [
                {k: torch.empty((rows, *shape), dtype=dt, pin_memory=True) for k, (shape, dt) in self.fields.items()}
                for _ in range(2)
            ]
            if self.cuda
            else None
        )
        self.slot = 0
        self.row = 0
        self.pending: tuple[int, int, torch.cuda.Event] | None = None
        self.host: dict[str, list[np.ndarray]] = {k: [] for k in self.fields}
        self.host_rows = 0
        self.on_host = on_host

    def __len__(self) -> int:
        return self.host_rows + (self.pending[1] if self.pending else 0) + self.row

    def push(self, **values: torch.Tensor) -> None:
        block = self.dev[self.slot]
        for k, v in values.items():
            block[k][self.row].copy_(v, non_blocking=True)
        self.row += 1
        if self.row == self.rows:
            self._ship()

    def _ship(self) -> None:
        self._collect()
        n, s = self.row, self.slot
        if n:
            if self.cuda:
                for k in self.fields:
                    self.pinned[s][k][:n].copy_(self.dev[s][k][:n], non_blocking=True)
                ev = torch.cuda.Event()
                ev.record()
                self.pending = (s, n, ev)
            else:
                self._land({k: self.dev[s][k][:n].numpy().copy() for k in self.fields})
        self.slot ^= 1
        self.row = 0

    def _collect(self) -> None:
        if self.pending is None:
            return
        s, n, ev = self.pending
        ev.synchronize()
        self.pending = None
        self._land({k: self.pinned[s][k][:n].numpy().copy() for k in self.fields})

    def _land(self, block: dict[str, np.ndarray]) -> None:
        for k, v in block.items():
            self.host[k].append(v)
        self.host_rows += len(next(iter(block.values())))
        if self.on_host is not None:
            self.on_host(block)

    def flush(self) -> None:
        """Bring every pushed record to the host (waits for the device)."""
        if self.row:
            self._ship()
        self._collect()

    def arrays(self) -> dict[str, np.ndarray]:
        """All records pushed so far, as host arrays (flushes first)."""
        self.flush()
        out = {}
        for k, (shape, dt) in self.fields.items():
            parts = self.host[k]
            if parts:
                if len(parts) > 1:
                    self.host[k] = parts = [np.concatenate(parts)]
                out[k] = parts[0]
            else:
                out[k] = torch.zeros((0, *shape), dtype=dt).numpy()
        return out
