"""Hosts on one machine: network namespaces on one virtual switch, with links of a real bandwidth.

Each host is a network namespace with its own address, linked by a veth pair to a bridge that lives in
a namespace of its own (the switch).  Every host's link is shaped with tc's token bucket (tbf) to the
configured rate in each direction (the host's end shapes what it sends, the switch's end what it
receives).  A delay needs netem; where the kernel lacks it (as here) latency is not emulated, and
`latency_note` says so.  This process reaches the hosts over an unshaped control link (the servers'
health checks, table set-up), so its traffic is not on the hosts' counters unless it talks to them.

Byte counters come from the kernel: each device's statistics in its namespace (the counters of
/sys/class/net/<dev>/statistics there, read without starting a process from /proc/<pid>/net/dev of a
`sleep` the harness keeps in each namespace, so a benchmark can sample them often): the bytes of every
frame that crossed the link, Ethernet header included (a veth has no preamble or FCS).

Traffic classes come from the kernel too: `classify_ports` installs, in every host, an nftables table on
the egress hook of the host's link that counts each frame (Ethernet header included, as the device
counters do) to the first class holding its TCP source or destination port, and every other frame to
OTHER; `class_counters` reads them.  A benchmark names its services' ports, so what is left is what the
job's processes say to each other on ports nobody chose (torch.distributed: gloo's allreduce and its
store).  Needs nft (Debian's nftables).

Processes run on a host through LocalHost.enter (`ip netns exec NS ...`); embps.trainer.local_job's
JobLayout places a job's shards, gateways, trainers and oracle cacher on them.

Names resolve without DNS: `ip netns exec` reads /etc/netns/<namespace>/{hosts,resolv.conf}, which
the harness writes (every host's name and this machine's hostname, at the host's own address; no
nameserver), so no lookup waits for a server the namespace cannot reach.

Names carry the owner's pid and a sequence number (namespaces `embps-<pid>-<n>-h<i>` and `-sw`, the
control link `eb<pid>-<n>`): teardown on exit removes everything, and every start first removes the
namespaces, links and processes of owners that are dead (a crashed run leaves nothing for long).
Needs root and iproute2; `unavailable_reason()` says why not otherwise.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import json
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from embps.common.local_cluster import LocalHost

PREFIX = "embps"
NETNS_ETC = "/etc/netns"            # where `ip netns exec` finds a namespace's own hosts and resolv.conf
HOST_DEV, BRIDGE = "eth0", "br0"
CONTROL = 254                       # the last octet of this process's address on the switch
QUEUE_LATENCY_MS = 100              # tbf queues this long at the rate before dropping
ACCOUNTING = "embps_accounting"     # the nftables table (family netdev) of classify_ports
OTHER = "other"                     # the class of frames no class's ports name
_NAMESPACE = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-(sw|h\d+)$")
_CONTROL_LINK = re.compile(r"^eb(\d+)-(\d+)$")
_sequence = itertools.count()


class NamespacesUnavailable(RuntimeError):
    """Network namespaces cannot be made here; the message says why (callers skip with it)."""


@dataclass(frozen=True)
class LinkShape:
    rate_mbit: float | None = None   # each direction of every host's link; None: unshaped
    delay_ms: float = 0.0            # added in each direction (needs netem)


@dataclass(frozen=True)
class LinkBytes:
    """A link's kernel counters seen from one end: tx what that end sent, rx what it received."""
    tx_bytes: int
    rx_bytes: int
    tx_packets: int
    rx_packets: int

    def __sub__(self, other: LinkBytes) -> LinkBytes:
        return LinkBytes(self.tx_bytes - other.tx_bytes, self.rx_bytes - other.rx_bytes,
                         self.tx_packets - other.tx_packets, self.rx_packets - other.rx_packets)

    @property
    def bytes(self) -> int:
        return self.tx_bytes + self.rx_bytes


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made by this process, or None if they probably can."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or in a container with CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found: install {package} (apt-get install {package})"
    return None


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _kill_namespace_processes(namespace: str, grace: float = 5.0) -> None:
    """SIGTERM to every process in namespace, SIGKILL to those still there after grace seconds (a
    process that even SIGKILL does not end within 10 s more, e.g. one stuck in the kernel, is left)."""
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while pids := [int(p) for p in _run("ip", "netns", "pids", namespace, check=False).stdout.split()]:
        if time.monotonic() > deadline + 10:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        time.sleep(0.05)


def remove_leftovers() -> list[str]:
    """Removes the namespaces, control links and processes of harnesses whose owner process is dead;
    returns what it removed."""
    removed = []
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAMESPACE.match(name)
        if match and not _alive(int(match[1])):
            _kill_namespace_processes(name, grace=1.0)
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    if os.path.isdir(NETNS_ETC):
        for name in os.listdir(NETNS_ETC):
            match = _NAMESPACE.match(name)
            if match and not _alive(int(match[1])):
                shutil.rmtree(os.path.join(NETNS_ETC, name), ignore_errors=True)
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if line.count(":") >= 2 else ""
        match = _CONTROL_LINK.match(name)
        if match and not _alive(int(match[1])):
            _run("ip", "link", "del", name, check=False)
            removed.append(name)
    return removed


def _free_subnet(seed: int) -> str:
    """A 10.X.Y.0/24 that no address or route of this namespace is in."""
    taken = _run("ip", "-4", "addr").stdout + _run("ip", "-4", "route").stdout
    for offset in range(4096):
        n = (seed + offset) % 4096
        prefix = f"10.{200 + n // 256 % 50}.{n % 256}"
        if f"{prefix}." not in taken:
            return prefix
    raise NamespacesUnavailable("no free 10.X.Y.0/24 subnet for the harness's switch")


class NetnsHosts:
    """Hosts named `names` on one switch, their links shaped to `shape`; a context manager."""

    def __init__(self, names: Sequence[str], shape: LinkShape = LinkShape()):
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"hosts need distinct names, got {list(names)}")
        self.names = list(names)
        self.shape = shape
        self.run_id = f"{os.getpid()}-{next(_sequence)}"
        self.switch = f"{PREFIX}-{self.run_id}-sw"
        self.namespaces = {name: f"{PREFIX}-{self.run_id}-h{i}" for i, name in enumerate(self.names)}
        self.control_link = f"eb{self.run_id}"
        self.subnet = ""
        self.latency_emulated = False
        self.latency_note = ""
        self._made: list[str] = []   # namespaces made so far, in order
        self._holders: dict[str, subprocess.Popen] = {}   # namespace -> the process whose /proc/<pid>/net we read
        self._class_names: dict[str, str] = {}            # nft counter -> class, of classify_ports

    # ---- life ----------------------------------------------------------------------------------

    def __enter__(self) -> NetnsHosts:
        reason = unavailable_reason()
        if reason:
            raise NamespacesUnavailable(reason)
        remove_leftovers()
        try:
            self._build()
        except subprocess.CalledProcessError as error:
            self.close()
            raise NamespacesUnavailable(f"cannot create network namespaces or links ({' '.join(error.cmd)}: "
                                        f"{error.stderr.strip()})") from None
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stops every process on the hosts and removes the namespaces and links (idempotent)."""
        for namespace in reversed(self._made):
            _kill_namespace_processes(namespace)
        for holder in self._holders.values():
            holder.wait()
        self._holders.clear()
        for namespace in reversed(self._made):
            _run("ip", "netns", "del", namespace, check=False)
            shutil.rmtree(os.path.join(NETNS_ETC, namespace), ignore_errors=True)
        _run("ip", "link", "del", self.control_link, check=False)   # gone with the switch, unless never moved
        self._made.clear()

    def _add_namespace(self, namespace: str) -> None:
        _run("ip", "netns", "add", namespace)
        self._made.append(namespace)
        _run("ip", "-n", namespace, "link", "set", "lo", "up")
        self._holders[namespace] = subprocess.Popen(["ip", "netns", "exec", namespace, "sleep", "infinity"],
                                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)

    def _build(self) -> None:
        self.subnet = _free_subnet(os.getpid() * 7 + int(self.run_id.split("-")[1]))
        self._add_namespace(self.switch)
        sw = ("ip", "-n", self.switch)
        _run(*sw, "link", "add", BRIDGE, "type", "bridge")
        _run(*sw, "link", "set", BRIDGE, "up")
        _run("ip", "link", "add", self.control_link, "type", "veth", "peer", "name", "ctl", "netns", self.switch)
        _run(*sw, "link", "set", "ctl", "master", BRIDGE, "up")
        _run("ip", "addr", "add", f"{self.subnet}.{CONTROL}/24", "dev", self.control_link)
        _run("ip", "link", "set", self.control_link, "up")
        for i, name in enumerate(self.names):
            namespace = self.namespaces[name]
            self._add_namespace(namespace)
            _run(*sw, "link", "add", self._port(name), "type", "veth", "peer", "name", HOST_DEV, "netns", namespace)
            _run(*sw, "link", "set", self._port(name), "master", BRIDGE, "up")
            _run("ip", "-n", namespace, "addr", "add", f"{self.address(name)}/24", "dev", HOST_DEV)
            _run("ip", "-n", namespace, "link", "set", HOST_DEV, "up")
            self._write_names(name)
        self._probe_netem()
        self.reshape(self.shape)

    def _write_names(self, name: str) -> None:
        directory = os.path.join(NETNS_ETC, self.namespaces[name])
        os.makedirs(directory, exist_ok=True)
        lines = ["127.0.0.1 localhost", f"{self.address(name)} {os.uname().nodename}"]
        lines += [f"{self.address(other)} {other}" for other in self.names]
        with open(os.path.join(directory, "hosts"), "w") as hosts:
            hosts.write("\n".join(lines) + "\n")
        with open(os.path.join(directory, "resolv.conf"), "w") as resolv:
            resolv.write("# no nameserver on the harness's switch: names are in hosts\noptions timeout:1 attempts:1\n")

    def _probe_netem(self) -> None:
        probe = _run("tc", "-n", self.switch, "qdisc", "add", "dev", "ctl", "root", "netem", "delay", "1ms",
                     check=False)
        self.latency_emulated = probe.returncode == 0
        if self.latency_emulated:
            _run("tc", "-n", self.switch, "qdisc", "del", "dev", "ctl", "root", check=False)
            self.latency_note = "latency emulated with netem"
        else:
            self.latency_note = (f"latency is not emulated: this kernel has no netem ({probe.stderr.strip()}); "
                                 "links have a bandwidth, and only the queueing delay of that")

    # ---- where things are ----------------------------------------------------------------------

    def _port(self, name: str) -> str:
        return f"p{self.names.index(name)}"

    def address(self, name: str) -> str:
        return f"{self.subnet}.{self.names.index(name) + 1}"

    def host(self, name: str) -> LocalHost:
        """The LocalHost that runs processes on host `name` (gloo is told which interface is the host's)."""
        return LocalHost(name=name, address=self.address(name),
                         enter=("ip", "netns", "exec", self.namespaces[name], "env", f"GLOO_SOCKET_IFNAME={HOST_DEV}"))

    # ---- links ---------------------------------------------------------------------------------

    def reshape(self, shape: LinkShape) -> None:
        """Shapes every host's link, both directions, to `shape` (replacing the last shape)."""
        if shape.delay_ms and not self.latency_emulated:
            raise NamespacesUnavailable(f"a delay of {shape.delay_ms} ms was asked for, but {self.latency_note}")
        for name in self.names:
            for namespace, dev in ((self.namespaces[name], HOST_DEV), (self.switch, self._port(name))):
                _run("tc", "-n", namespace, "qdisc", "del", "dev", dev, "root", check=False)
                self._shape_device(namespace, dev, shape)
        self.shape = shape

    @staticmethod
    def _shape_device(namespace: str, dev: str, shape: LinkShape) -> None:
        tc = ("tc", "-n", namespace, "qdisc", "add", "dev", dev)
        parent: tuple[str, ...] = ("root",)
        if shape.delay_ms:
            _run(*tc, "root", "handle", "1:", "netem", "delay", f"{shape.delay_ms}ms")
            parent = ("parent", "1:")
        if shape.rate_mbit:
            rate_bytes = shape.rate_mbit * 1e6 / 8
            # The bucket holds 64 KiB at least: a veth hands tbf GSO packets of up to 64 KiB.
            burst = max(64 << 10, int(rate_bytes * 0.002))
            _run(*tc, *parent, "tbf", "rate", f"{shape.rate_mbit}mbit", "burst", str(burst),
                 "latency", f"{QUEUE_LATENCY_MS}ms")

    # ---- counters ------------------------------------------------------------------------------

    def counters(self) -> dict[str, LinkBytes]:
        """Each host's link as the host sees it (tx: what the host sent onto the wire)."""
        return {name: self._read(self.namespaces[name], [HOST_DEV])[HOST_DEV] for name in self.names}

    def switch_counters(self) -> dict[str, LinkBytes]:
        """Each switch port (tx: what the switch sent to the host), and "control" for this process's link."""
        ports = {self._port(name): name for name in self.names}
        read = self._read(self.switch, [*ports, "ctl"])
        return {**{ports[p]: read[p] for p in ports}, "control": read["ctl"]}

    def classify_ports(self, classes: Mapping[str, Collection[int]]) -> None:
        """From now on every host counts the frames it sends to the first of classes (name -> TCP ports)
        that holds the frame's source or destination port, and the rest to OTHER (replacing the last
        classes and zeroing the counts)."""
        if OTHER in classes:
            raise ValueError(f"'{OTHER}' is the class of every frame the others leave")
        lines, rules = [f"table netdev {ACCOUNTING} {{", f"counter {OTHER} {{}}"], []
        for i, (name, ports) in enumerate(classes.items()):
            elements = f"elements = {{ {', '.join(str(p) for p in sorted(set(ports)))} }}" if ports else ""
            lines += [f"set ports{i} {{ type inet_service; {elements} }}", f"counter c{i} {{}}"]
            rules += [f"tcp sport @ports{i} counter name c{i} accept", f"tcp dport @ports{i} counter name c{i} accept"]
        lines += [f"chain egress {{ type filter hook egress device \"{HOST_DEV}\" priority 0;", *rules,
                  f"counter name {OTHER}", "}", "}"]
        self._class_names = {f"c{i}": name for i, name in enumerate(classes)} | {OTHER: OTHER}
        table = "\n".join(lines) + "\n"
        for namespace in self.namespaces.values():
            _run("ip", "netns", "exec", namespace, "nft", "delete", "table", "netdev", ACCOUNTING, check=False)
            subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=table, capture_output=True,
                           text=True, check=True, timeout=30)

    def class_counters(self) -> dict[str, dict[str, int]]:
        """Per host, the bytes it sent in each class of classify_ports (and OTHER) since that call."""
        counts = {}
        for name, namespace in self.namespaces.items():
            listing = _run("ip", "netns", "exec", namespace, "nft", "-j", "list", "counters", "table", "netdev",
                           ACCOUNTING).stdout
            counters = [item["counter"] for item in json.loads(listing)["nftables"] if "counter" in item]
            counts[name] = {self._class_names[c["name"]]: int(c["bytes"]) for c in counters}
        return counts

    def _read(self, namespace: str, devices: list[str]) -> dict[str, LinkBytes]:
        # /proc/<pid>/net is the network namespace of <pid>: here, the holder's.
        with open(f"/proc/{self._holders[namespace].pid}/net/dev") as table:
            rows = {name.strip(): values.split() for name, _, values in
                    (line.partition(":") for line in table.read().splitlines()[2:])}
        # Receive: bytes packets errs drop fifo frame compressed multicast; then transmit: bytes packets ...
        return {dev: LinkBytes(tx_bytes=int(rows[dev][8]), rx_bytes=int(rows[dev][0]), tx_packets=int(rows[dev][9]),
                               rx_packets=int(rows[dev][1])) for dev in devices}
