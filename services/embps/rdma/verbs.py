"""The pyverbs calls both sides of the RDMA path make: open a device port, register memory, create
and connect RC queue pairs, post receives.  Needs pyverbs and a device; pyverbs is imported inside
each call, so importing this module does not need it.
"""

from __future__ import annotations

from .discovery import RdmaUnavailable
from .exchange import EndpointInfo

_MTU_BYTES = (256, 512, 1024, 2048, 4096)   # ibv_mtu enum values 1..5


def _mtu_enum(nbytes: int) -> int:
    return _MTU_BYTES.index(nbytes) + 1


class VerbsDevice:
    """An opened device port: context, protection domain, port attributes and the GID used for routing."""

    def __init__(self, name: str, port: int = 1, gid_index: int = -1):
        import pyverbs.enums as e
        from pyverbs.device import Context
        from pyverbs.pd import PD

        self.name, self.port = name, port
        self.ctx = Context(name=name)
        try:
            self.attr = self.ctx.query_device()
            port_attr = self.ctx.query_port(port)
            if port_attr.state != e.IBV_PORT_ACTIVE:
                raise RdmaUnavailable(f"port {port} of {name} is not active (state {port_attr.state})")
            self.link_layer = "ethernet" if port_attr.link_layer == e.IBV_LINK_LAYER_ETHERNET else "infiniband"
            self.lid = int(port_attr.lid)
            self.mtu = _MTU_BYTES[int(port_attr.active_mtu) - 1]
            self.gid_index = gid_index if gid_index >= 0 else self._pick_gid_index(port_attr.gid_tbl_len)
            self.gid = str(self.ctx.query_gid(port, self.gid_index).gid)
            self.pd = PD(self.ctx)
        except BaseException:
            self.ctx.close()
            raise

    def _pick_gid_index(self, table_len: int) -> int:
        """InfiniBand: 0.  RoCE: a RoCE v2 GID holding an IPv4 address, else any RoCE v2 GID, else the first."""
        import pyverbs.enums as e
        if self.link_layer == "infiniband":
            return 0
        v2_types = {e.IBV_GID_TYPE_ROCE_V2, e.IBV_GID_TYPE_SYSFS_ROCE_V2}
        first = v2 = None
        for index in range(table_len):
            try:
                gid = str(self.ctx.query_gid(self.port, index).gid)
            except Exception:
                continue
            if gid.replace(":", "").strip("0") == "":
                continue
            first = index if first is None else first
            try:
                is_v2 = self.ctx.query_gid_type(self.port, index) in v2_types
            except Exception:
                is_v2 = False
            if is_v2 and gid.startswith("0000:0000:0000:0000:0000:ffff:"):
                return index
            if is_v2 and v2 is None:
                v2 = index
        if v2 is not None:
            return v2
        if first is not None:
            return first
        raise RdmaUnavailable(f"port {self.port} of {self.name} has no usable GID")

    def endpoint(self, qp_num: int, psn: int, mr_addr: int, mr_rkey: int, mr_length: int, max_sge: int,
                 generation: str, extra: dict) -> EndpointInfo:
        return EndpointInfo(gid=self.gid, lid=self.lid, qp_num=qp_num, psn=psn, mr_addr=mr_addr, mr_rkey=mr_rkey,
                            mr_length=mr_length, max_sge=max_sge, mtu=self.mtu, port=self.port,
                            gid_index=self.gid_index, link_layer=self.link_layer, generation=generation, extra=extra)

    def close(self) -> None:
        self.pd.close()
        self.ctx.close()


class RegisteredBuffer:
    """Page-aligned anonymous memory registered as one MR; `array` is its numpy uint8 view."""

    def __init__(self, device: VerbsDevice, nbytes: int, access: int):
        import mmap

        import numpy as np
        from pyverbs.mr import MR

        self.nbytes = max(int(nbytes), 64)
        self._mmap = mmap.mmap(-1, self.nbytes)
        self.array = np.frombuffer(self._mmap, np.uint8)
        self.addr = int(self.array.ctypes.data)
        self.mr = MR(device.pd, self.nbytes, access, address=self.addr)

    @property
    def lkey(self) -> int:
        return int(self.mr.lkey)

    @property
    def rkey(self) -> int:
        return int(self.mr.rkey)

    def close(self) -> None:
        self.mr.close()   # the mapping goes with the last reference to `array`


def create_rc_qp(device: VerbsDevice, cq, max_send_wr: int, max_recv_wr: int, max_send_sge: int):
    """An RC queue pair in INIT (remote writes allowed), and the scatter-gather entries per send WR it
    accepts: asks for max_send_sge and halves on refusal (the device's max_sge is not always valid for
    every opcode)."""
    import pyverbs.enums as e
    from pyverbs.pyverbs_error import PyverbsRDMAError
    from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr

    attr = QPAttr(port_num=device.port)
    attr.qp_access_flags = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
    sge = max(1, int(max_send_sge))
    while True:
        cap = QPCap(max_send_wr=max_send_wr, max_recv_wr=max_recv_wr, max_send_sge=sge, max_recv_sge=1)
        init = QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap)
        try:
            qp = QP(device.pd, init, attr)
            break
        except PyverbsRDMAError:
            if sge == 1:
                raise
            sge //= 2
    try:   # the device may grant more than asked; never use more than asked
        _, granted = qp.query(e.IBV_QP_CAP)
        sge = min(sge, int(granted.max_send_sge)) or sge
    except Exception:
        pass
    return qp, sge


def connect_rc_qp(qp, device: VerbsDevice, local_psn: int, remote: EndpointInfo) -> None:
    """INIT -> RTR -> RTS towards the remote endpoint (ibv_rc_pingpong's timers, infinite RNR retry)."""
    from pyverbs.addr import GID, AHAttr, GlobalRoute
    from pyverbs.qp import QPAttr

    attr = QPAttr(port_num=device.port)
    attr.path_mtu = _mtu_enum(min(device.mtu, remote.mtu))
    attr.dest_qp_num = remote.qp_num
    attr.rq_psn = remote.psn
    attr.sq_psn = local_psn
    attr.max_dest_rd_atomic = 1
    attr.max_rd_atomic = 1
    attr.min_rnr_timer = 12
    attr.timeout = 14
    attr.retry_cnt = 7
    attr.rnr_retry = 7
    if device.link_layer == "ethernet" or remote.lid == 0:
        route = GlobalRoute(dgid=GID(remote.gid), sgid_index=device.gid_index)
        attr.ah_attr = AHAttr(port_num=device.port, is_global=1, gr=route, dlid=remote.lid)
    else:
        attr.ah_attr = AHAttr(port_num=device.port, is_global=0, dlid=remote.lid)
    qp.to_rts(attr)


def set_qp_error(qp) -> None:
    """Moves a QP to ERROR: the NIC stops, and every outstanding WR completes with a flush error."""
    import pyverbs.enums as e
    from pyverbs.qp import QPAttr
    qp.modify(QPAttr(qp_state=e.IBV_QPS_ERR), e.IBV_QP_STATE)


def post_recvs(qp, count: int, wr_id: int, sink_addr: int, sink_lkey: int) -> None:
    """Receive WRs for WRITE_WITH_IMM (no payload lands in them; pyverbs insists on one SGE)."""
    from pyverbs.wr import SGE, RecvWR
    for _ in range(count):
        qp.post_recv(RecvWR(wr_id=wr_id, num_sge=1, sg=[SGE(sink_addr, 16, sink_lkey)]), None)
