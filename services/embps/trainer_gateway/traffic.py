"""What a gateway moved: payload bytes to and from the shards, rows fetched (and of those, rows from
another host's shard) versus rows used, and gradient bytes sent to the other gateways."""

from __future__ import annotations

import threading


class Traffic:
    def __init__(self):
        self.lock = threading.Lock()
        self.bytes_in = self.bytes_out = self.rows_fetched = self.rows_used = 0
        self.remote_rows_fetched = self.peer_grad_bytes_out = 0

    def add(self, bytes_in=0, bytes_out=0, rows_fetched=0, rows_used=0, remote_rows_fetched=0,
            peer_grad_bytes_out=0):
        with self.lock:
            self.bytes_in += bytes_in
            self.bytes_out += bytes_out
            self.rows_fetched += rows_fetched
            self.rows_used += rows_used
            self.remote_rows_fetched += remote_rows_fetched
            self.peer_grad_bytes_out += peer_grad_bytes_out
