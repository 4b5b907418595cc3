"""RDMA device discovery and the data-path choice: whether a process uses RDMA, and why not.

`probe_rdma()` lists the verbs devices pyverbs sees (none when pyverbs is missing, the list is empty
or listing fails, with the reason); `choose_data_path()` decides whether a process uses RDMA and
logs the fallback once per role and reason ("no RDMA device (reason); using the TCP/gRPC path").
The caller keeps the returned choice: its reason goes to Stats and metrics.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass

log = logging.getLogger("embps.rdma")

RDMA_MODES = ("auto", "on", "off")


class RdmaUnavailable(RuntimeError):
    """RDMA was required (rdma = "on") but cannot be used here."""


@dataclass(frozen=True)
class RdmaProbe:
    """What device listing found: the device names, or why there are none."""

    devices: tuple[str, ...]
    reason: str = ""    # empty when devices were found


def probe_rdma() -> RdmaProbe:
    """Lists verbs devices with pyverbs; never raises."""
    try:
        from pyverbs.device import get_device_list
    except ImportError as error:
        return RdmaProbe((), f"pyverbs not importable: {error}")
    try:
        devices = get_device_list()
    except Exception as error:   # PyverbsRDMAError "Failed to get devices list" when none is present
        return RdmaProbe((), f"device listing failed: {error}")
    names = tuple(d.name.decode() if isinstance(d.name, bytes) else str(d.name) for d in devices)
    if not names:
        return RdmaProbe((), "no RDMA device found")
    return RdmaProbe(names)


@dataclass(frozen=True)
class DataPathChoice:
    kind: str              # "rdma" or "fallback" (the TCP/gRPC paths)
    device: str | None
    reason: str            # why RDMA is not used; "" when it is

    @property
    def rdma(self) -> bool:
        return self.kind == "rdma"


_logged: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


def choose_data_path(mode: str = "auto", device: str = "", memcached: str = "", *, role: str = "shard",
                     probe: RdmaProbe | None = None) -> DataPathChoice:
    """Whether this process serves (role "shard") or uses (role "client") the RDMA path.

    mode "auto" uses RDMA when a device (the named one, or the first) exists and memcached is set,
    "on" raises RdmaUnavailable when it cannot, "off" never uses it.  The fallback is logged once
    per process, role and reason."""
    if mode not in RDMA_MODES:
        raise ValueError(f"rdma mode must be one of {RDMA_MODES}, got {mode!r}")
    choice, what = _decide(mode, device, memcached, probe)
    if not choice.rdma:
        if mode == "on":
            raise RdmaUnavailable(f"RDMA required but unavailable: {choice.reason}")
        _log_fallback_once(role, what, choice.reason)
    return choice


def _decide(mode: str, device: str, memcached: str, probe: RdmaProbe | None) -> tuple[DataPathChoice, str]:
    """The choice, and what the fallback log line calls it."""
    if mode == "off":
        return DataPathChoice("fallback", None, 'disabled by configuration (rdma = "off")'), "RDMA data path off"
    probe = probe if probe is not None else probe_rdma()
    if not probe.devices:
        return DataPathChoice("fallback", None, probe.reason or "no RDMA device found"), "no RDMA device"
    if device and device not in probe.devices:
        return (DataPathChoice("fallback", None, f"device {device!r} not found (present: {', '.join(probe.devices)})"),
                "no RDMA device")
    if not memcached:
        return (DataPathChoice("fallback", None, "no memcached address for the queue-pair exchange"),
                "RDMA data path unavailable")
    if importlib.util.find_spec("pymemcache") is None:
        return (DataPathChoice("fallback", None, "pymemcache is not installed: pip install 'embps[rdma]'"),
                "RDMA data path unavailable")
    return DataPathChoice("rdma", device or probe.devices[0], ""), ""


def _log_fallback_once(role: str, what: str, reason: str) -> None:
    with _logged_lock:
        fresh = (role, reason) not in _logged
        _logged.add((role, reason))
    if fresh:
        log.info(f"{what} ({reason}); using the TCP/gRPC path", extra={"role": role, "rdma_reason": reason})
