from embps.v1 import ps_shard_pb2 as _ps_shard_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GatewayMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GATEWAY_MODE_UNSPECIFIED: _ClassVar[GatewayMode]
    GATEWAY_MODE_SYNC: _ClassVar[GatewayMode]
    GATEWAY_MODE_DIRECT: _ClassVar[GatewayMode]
    GATEWAY_MODE_BOUNDED: _ClassVar[GatewayMode]
GATEWAY_MODE_UNSPECIFIED: GatewayMode
GATEWAY_MODE_SYNC: GatewayMode
GATEWAY_MODE_DIRECT: GatewayMode
GATEWAY_MODE_BOUNDED: GatewayMode

class JobConfig(_message.Message):
    __slots__ = ("dataset", "dataset_options", "model", "mode", "trainers", "global_batch", "steps", "eval_batches", "dim", "emb_optimizer", "emb_lr", "emb_eps", "dense_optimizer", "dense_lr", "lookahead", "cleanup_proportion", "seed", "table", "timeout_seconds", "addresses", "security", "placement", "staleness", "store_rate", "emb_beta1", "emb_beta2")
    class OptionValue(_message.Message):
        __slots__ = ("bool_value", "int_value", "double_value", "string_value", "list_value")
        BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
        INT_VALUE_FIELD_NUMBER: _ClassVar[int]
        DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
        STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
        LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
        bool_value: bool
        int_value: int
        double_value: float
        string_value: str
        list_value: JobConfig.OptionList
        def __init__(self, bool_value: _Optional[bool] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., string_value: _Optional[str] = ..., list_value: _Optional[_Union[JobConfig.OptionList, _Mapping]] = ...) -> None: ...
    class OptionList(_message.Message):
        __slots__ = ("values",)
        VALUES_FIELD_NUMBER: _ClassVar[int]
        values: _containers.RepeatedCompositeFieldContainer[JobConfig.OptionValue]
        def __init__(self, values: _Optional[_Iterable[_Union[JobConfig.OptionValue, _Mapping]]] = ...) -> None: ...
    class Addresses(_message.Message):
        __slots__ = ("oracle", "gateways", "shards", "trainers", "hosts")
        ORACLE_FIELD_NUMBER: _ClassVar[int]
        GATEWAYS_FIELD_NUMBER: _ClassVar[int]
        SHARDS_FIELD_NUMBER: _ClassVar[int]
        TRAINERS_FIELD_NUMBER: _ClassVar[int]
        HOSTS_FIELD_NUMBER: _ClassVar[int]
        oracle: str
        gateways: _containers.RepeatedScalarFieldContainer[str]
        shards: _containers.RepeatedScalarFieldContainer[str]
        trainers: str
        hosts: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, oracle: _Optional[str] = ..., gateways: _Optional[_Iterable[str]] = ..., shards: _Optional[_Iterable[str]] = ..., trainers: _Optional[str] = ..., hosts: _Optional[_Iterable[str]] = ...) -> None: ...
    class Security(_message.Message):
        __slots__ = ("tls_cert", "tls_key", "tls_ca", "tls_client_auth", "tls_server_name", "auth_token_file")
        TLS_CERT_FIELD_NUMBER: _ClassVar[int]
        TLS_KEY_FIELD_NUMBER: _ClassVar[int]
        TLS_CA_FIELD_NUMBER: _ClassVar[int]
        TLS_CLIENT_AUTH_FIELD_NUMBER: _ClassVar[int]
        TLS_SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
        AUTH_TOKEN_FILE_FIELD_NUMBER: _ClassVar[int]
        tls_cert: str
        tls_key: str
        tls_ca: str
        tls_client_auth: bool
        tls_server_name: str
        auth_token_file: str
        def __init__(self, tls_cert: _Optional[str] = ..., tls_key: _Optional[str] = ..., tls_ca: _Optional[str] = ..., tls_client_auth: _Optional[bool] = ..., tls_server_name: _Optional[str] = ..., auth_token_file: _Optional[str] = ...) -> None: ...
    class DatasetOptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: JobConfig.OptionValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[JobConfig.OptionValue, _Mapping]] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TRAINERS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_BATCH_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EVAL_BATCHES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    EMB_OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    EMB_LR_FIELD_NUMBER: _ClassVar[int]
    EMB_EPS_FIELD_NUMBER: _ClassVar[int]
    DENSE_OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    DENSE_LR_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_FIELD_NUMBER: _ClassVar[int]
    CLEANUP_PROPORTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    SECURITY_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    STORE_RATE_FIELD_NUMBER: _ClassVar[int]
    EMB_BETA1_FIELD_NUMBER: _ClassVar[int]
    EMB_BETA2_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    dataset_options: _containers.MessageMap[str, JobConfig.OptionValue]
    model: str
    mode: GatewayMode
    trainers: int
    global_batch: int
    steps: int
    eval_batches: int
    dim: int
    emb_optimizer: _ps_shard_pb2.OptimizerKind
    emb_lr: float
    emb_eps: float
    dense_optimizer: _ps_shard_pb2.OptimizerKind
    dense_lr: float
    lookahead: int
    cleanup_proportion: float
    seed: int
    table: str
    timeout_seconds: float
    addresses: JobConfig.Addresses
    security: JobConfig.Security
    placement: str
    staleness: int
    store_rate: float
    emb_beta1: float
    emb_beta2: float
    def __init__(self, dataset: _Optional[str] = ..., dataset_options: _Optional[_Mapping[str, JobConfig.OptionValue]] = ..., model: _Optional[str] = ..., mode: _Optional[_Union[GatewayMode, str]] = ..., trainers: _Optional[int] = ..., global_batch: _Optional[int] = ..., steps: _Optional[int] = ..., eval_batches: _Optional[int] = ..., dim: _Optional[int] = ..., emb_optimizer: _Optional[_Union[_ps_shard_pb2.OptimizerKind, str]] = ..., emb_lr: _Optional[float] = ..., emb_eps: _Optional[float] = ..., dense_optimizer: _Optional[_Union[_ps_shard_pb2.OptimizerKind, str]] = ..., dense_lr: _Optional[float] = ..., lookahead: _Optional[int] = ..., cleanup_proportion: _Optional[float] = ..., seed: _Optional[int] = ..., table: _Optional[str] = ..., timeout_seconds: _Optional[float] = ..., addresses: _Optional[_Union[JobConfig.Addresses, _Mapping]] = ..., security: _Optional[_Union[JobConfig.Security, _Mapping]] = ..., placement: _Optional[str] = ..., staleness: _Optional[int] = ..., store_rate: _Optional[float] = ..., emb_beta1: _Optional[float] = ..., emb_beta2: _Optional[float] = ...) -> None: ...

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

class GetJobRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamPlansRequest(_message.Message):
    __slots__ = ("trainer",)
    TRAINER_FIELD_NUMBER: _ClassVar[int]
    trainer: int
    def __init__(self, trainer: _Optional[int] = ...) -> None: ...

class StreamPlansResponse(_message.Message):
    __slots__ = ("plan",)
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: BatchPlan
    def __init__(self, plan: _Optional[_Union[BatchPlan, _Mapping]] = ...) -> None: ...

class TrainingBatch(_message.Message):
    __slots__ = ("batch", "features", "keys", "rows", "inverse")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    INVERSE_FIELD_NUMBER: _ClassVar[int]
    batch: int
    features: FeatureSlice
    keys: bytes
    rows: bytes
    inverse: bytes
    def __init__(self, batch: _Optional[int] = ..., features: _Optional[_Union[FeatureSlice, _Mapping]] = ..., keys: _Optional[bytes] = ..., rows: _Optional[bytes] = ..., inverse: _Optional[bytes] = ...) -> None: ...

class NextBatchRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NextBatchResponse(_message.Message):
    __slots__ = ("batch", "done")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    batch: TrainingBatch
    done: bool
    def __init__(self, batch: _Optional[_Union[TrainingBatch, _Mapping]] = ..., done: _Optional[bool] = ...) -> None: ...

class PushGradientsRequest(_message.Message):
    __slots__ = ("batch", "keys", "grads", "then_next_batch")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    GRADS_FIELD_NUMBER: _ClassVar[int]
    THEN_NEXT_BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: int
    keys: bytes
    grads: bytes
    then_next_batch: bool
    def __init__(self, batch: _Optional[int] = ..., keys: _Optional[bytes] = ..., grads: _Optional[bytes] = ..., then_next_batch: _Optional[bool] = ...) -> None: ...

class PushGradientsResponse(_message.Message):
    __slots__ = ("next",)
    NEXT_FIELD_NUMBER: _ClassVar[int]
    next: NextBatchResponse
    def __init__(self, next: _Optional[_Union[NextBatchResponse, _Mapping]] = ...) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FinishResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: GatewayStats
    def __init__(self, stats: _Optional[_Union[GatewayStats, _Mapping]] = ...) -> None: ...

class GetGatewayStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GatewayStats(_message.Message):
    __slots__ = ("steps", "rows_used", "rows_fetched", "ps_bytes_in", "ps_bytes_out", "mode", "wait_seconds", "remote_rows_fetched", "peer_grad_bytes_out")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ROWS_USED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FETCHED_FIELD_NUMBER: _ClassVar[int]
    PS_BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    PS_BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ROWS_FETCHED_FIELD_NUMBER: _ClassVar[int]
    PEER_GRAD_BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    steps: int
    rows_used: int
    rows_fetched: int
    ps_bytes_in: int
    ps_bytes_out: int
    mode: GatewayMode
    wait_seconds: float
    remote_rows_fetched: int
    peer_grad_bytes_out: int
    def __init__(self, steps: _Optional[int] = ..., rows_used: _Optional[int] = ..., rows_fetched: _Optional[int] = ..., ps_bytes_in: _Optional[int] = ..., ps_bytes_out: _Optional[int] = ..., mode: _Optional[_Union[GatewayMode, str]] = ..., wait_seconds: _Optional[float] = ..., remote_rows_fetched: _Optional[int] = ..., peer_grad_bytes_out: _Optional[int] = ...) -> None: ...

class ContributeRequest(_message.Message):
    __slots__ = ("batch", "trainer", "keys", "grads", "counts", "part")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    TRAINER_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    GRADS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    batch: int
    trainer: int
    keys: bytes
    grads: bytes
    counts: bytes
    part: int
    def __init__(self, batch: _Optional[int] = ..., trainer: _Optional[int] = ..., keys: _Optional[bytes] = ..., grads: _Optional[bytes] = ..., counts: _Optional[bytes] = ..., part: _Optional[int] = ...) -> None: ...

class ContributeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NotifyRoundRequest(_message.Message):
    __slots__ = ("round", "trainer")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TRAINER_FIELD_NUMBER: _ClassVar[int]
    round: int
    trainer: int
    def __init__(self, round: _Optional[int] = ..., trainer: _Optional[int] = ...) -> None: ...

class NotifyRoundResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
