from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureSlice(_message.Message):
    __slots__ = ("samples", "dense", "sparse", "labels")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    samples: int
    dense: bytes
    sparse: bytes
    labels: bytes
    def __init__(self, samples: _Optional[int] = ..., dense: _Optional[bytes] = ..., sparse: _Optional[bytes] = ..., labels: _Optional[bytes] = ...) -> None: ...

class BatchPlan(_message.Message):
    __slots__ = ("batch", "features", "keys", "sync_now", "prefetch", "stream", "evict", "fetch_after_round")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SYNC_NOW_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    EVICT_FIELD_NUMBER: _ClassVar[int]
    FETCH_AFTER_ROUND_FIELD_NUMBER: _ClassVar[int]
    batch: int
    features: FeatureSlice
    keys: bytes
    sync_now: bytes
    prefetch: bytes
    stream: bytes
    evict: bytes
    fetch_after_round: int
    def __init__(self, batch: _Optional[int] = ..., features: _Optional[_Union[FeatureSlice, _Mapping]] = ..., keys: _Optional[bytes] = ..., sync_now: _Optional[bytes] = ..., prefetch: _Optional[bytes] = ..., stream: _Optional[bytes] = ..., evict: _Optional[bytes] = ..., fetch_after_round: _Optional[int] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("trainer",)
    TRAINER_FIELD_NUMBER: _ClassVar[int]
    trainer: int
    def __init__(self, trainer: _Optional[int] = ...) -> None: ...

class JobRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobResponse(_message.Message):
    __slots__ = ("job_toml",)
    JOB_TOML_FIELD_NUMBER: _ClassVar[int]
    job_toml: str
    def __init__(self, job_toml: _Optional[str] = ...) -> None: ...

class NextBatchRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrainingBatch(_message.Message):
    __slots__ = ("batch", "features", "keys", "rows", "inverse", "done")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    INVERSE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    batch: int
    features: FeatureSlice
    keys: bytes
    rows: bytes
    inverse: bytes
    done: bool
    def __init__(self, batch: _Optional[int] = ..., features: _Optional[_Union[FeatureSlice, _Mapping]] = ..., keys: _Optional[bytes] = ..., rows: _Optional[bytes] = ..., inverse: _Optional[bytes] = ..., done: _Optional[bool] = ...) -> None: ...

class GradientPush(_message.Message):
    __slots__ = ("batch", "keys", "grads")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    GRADS_FIELD_NUMBER: _ClassVar[int]
    batch: int
    keys: bytes
    grads: bytes
    def __init__(self, batch: _Optional[int] = ..., keys: _Optional[bytes] = ..., grads: _Optional[bytes] = ...) -> None: ...

class PushAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GatewayStats(_message.Message):
    __slots__ = ("steps", "rows_used", "rows_fetched", "ps_bytes_in", "ps_bytes_out", "mode", "wait_seconds")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ROWS_USED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FETCHED_FIELD_NUMBER: _ClassVar[int]
    PS_BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    PS_BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    steps: int
    rows_used: int
    rows_fetched: int
    ps_bytes_in: int
    ps_bytes_out: int
    mode: str
    wait_seconds: float
    def __init__(self, steps: _Optional[int] = ..., rows_used: _Optional[int] = ..., rows_fetched: _Optional[int] = ..., ps_bytes_in: _Optional[int] = ..., ps_bytes_out: _Optional[int] = ..., mode: _Optional[str] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class PeerGradients(_message.Message):
    __slots__ = ("batch", "trainer", "keys", "grads")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    TRAINER_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    GRADS_FIELD_NUMBER: _ClassVar[int]
    batch: int
    trainer: int
    keys: bytes
    grads: bytes
    def __init__(self, batch: _Optional[int] = ..., trainer: _Optional[int] = ..., keys: _Optional[bytes] = ..., grads: _Optional[bytes] = ...) -> None: ...

class RoundDone(_message.Message):
    __slots__ = ("round", "trainer")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TRAINER_FIELD_NUMBER: _ClassVar[int]
    round: int
    trainer: int
    def __init__(self, round: _Optional[int] = ..., trainer: _Optional[int] = ...) -> None: ...

class PeerAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
