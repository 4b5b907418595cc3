"""What `embps partition` is asked to do: pure settings, importable without the native core."""

from __future__ import annotations

from dataclasses import dataclass

from .spec import MAX_HOSTS


@dataclass(frozen=True)
class PartitionSettings:
    hosts: int
    batch: int                       # B: samples per host per iteration
    rounds: int = 5                  # refinement rounds (HET-GMP's T; the paper uses 5)
    seed: int = 0                    # fixes each round's visiting order
    store_rate: float = 0.01         # mirrors per host: this fraction of the graph's rows it does not own
    # Balance: weight x (starting objective) x sum over hosts of the squared relative deviation from the
    # mean, of samples, rows and served remote fetches; slack: hard caps at (1 + slack) x the mean.
    sample_balance: float = 1.0
    row_balance: float = 1.0
    load_balance: float = 1.0
    sample_slack: float = 0.05
    row_slack: float = 0.10
    # Cost of host i fetching a row from host j (diagonal unused); None: 1 between any two hosts.
    link_cost: tuple[tuple[float, ...], ...] | None = None
    # Threads of the sample sweeps; None: one per CPU.  The placement does not depend on it.
    threads: int | None = None

    def __post_init__(self):
        if not 1 <= self.hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be in [1, {MAX_HOSTS}], got {self.hosts}")
        if self.batch < 1 or self.rounds < 0:
            raise ValueError(f"need batch >= 1 and rounds >= 0, got {self.batch} and {self.rounds}")
        if self.threads is not None and not 1 <= self.threads <= 64:
            raise ValueError(f"threads must be in [1, 64], got {self.threads}")
        if not 0 <= self.store_rate <= 1:
            raise ValueError(f"store_rate must be in [0, 1], got {self.store_rate}")
        if self.link_cost is not None and (len(self.link_cost) != self.hosts
                                           or any(len(row) != self.hosts for row in self.link_cost)):
            raise ValueError(f"link_cost must be {self.hosts} x {self.hosts}")

    def link_cost_matrix(self) -> list[list[float]]:
        if self.link_cost is not None:
            return [list(row) for row in self.link_cost]
        return [[0.0 if i == j else 1.0 for j in range(self.hosts)] for i in range(self.hosts)]
