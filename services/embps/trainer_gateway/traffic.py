"""What a gateway moved: payload bytes to and from the shards, and rows fetched versus rows used."""

from __future__ import annotations

import threading


class Traffic:
    def __init__(self):
        self.lock = threading.Lock()
        self.bytes_in = self.bytes_out = self.rows_fetched = self.rows_used = 0

    def add(self, bytes_in=0, bytes_out=0, rows_fetched=0, rows_used=0):
        with self.lock:
            self.bytes_in += bytes_in
            self.bytes_out += bytes_out
            self.rows_fetched += rows_fetched
            self.rows_used += rows_used
