from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OptimizerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_KIND_UNSPECIFIED: _ClassVar[OptimizerKind]
    OPTIMIZER_KIND_SGD: _ClassVar[OptimizerKind]
    OPTIMIZER_KIND_ADAGRAD: _ClassVar[OptimizerKind]
    OPTIMIZER_KIND_ROWWISE_ADAGRAD: _ClassVar[OptimizerKind]
    OPTIMIZER_KIND_ADAM: _ClassVar[OptimizerKind]

class InitializerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INITIALIZER_KIND_UNSPECIFIED: _ClassVar[InitializerKind]
    INITIALIZER_KIND_ZEROS: _ClassVar[InitializerKind]
    INITIALIZER_KIND_UNIFORM: _ClassVar[InitializerKind]
    INITIALIZER_KIND_NORMAL: _ClassVar[InitializerKind]

class MissingKeys(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MISSING_KEYS_UNSPECIFIED: _ClassVar[MissingKeys]
    MISSING_KEYS_INITIALIZE: _ClassVar[MissingKeys]
    MISSING_KEYS_REPORT: _ClassVar[MissingKeys]

class DataPathKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_PATH_KIND_UNSPECIFIED: _ClassVar[DataPathKind]
    DATA_PATH_KIND_GRPC: _ClassVar[DataPathKind]
    DATA_PATH_KIND_TCP: _ClassVar[DataPathKind]
    DATA_PATH_KIND_RDMA: _ClassVar[DataPathKind]
OPTIMIZER_KIND_UNSPECIFIED: OptimizerKind
OPTIMIZER_KIND_SGD: OptimizerKind
OPTIMIZER_KIND_ADAGRAD: OptimizerKind
OPTIMIZER_KIND_ROWWISE_ADAGRAD: OptimizerKind
OPTIMIZER_KIND_ADAM: OptimizerKind
INITIALIZER_KIND_UNSPECIFIED: InitializerKind
INITIALIZER_KIND_ZEROS: InitializerKind
INITIALIZER_KIND_UNIFORM: InitializerKind
INITIALIZER_KIND_NORMAL: InitializerKind
MISSING_KEYS_UNSPECIFIED: MissingKeys
MISSING_KEYS_INITIALIZE: MissingKeys
MISSING_KEYS_REPORT: MissingKeys
DATA_PATH_KIND_UNSPECIFIED: DataPathKind
DATA_PATH_KIND_GRPC: DataPathKind
DATA_PATH_KIND_TCP: DataPathKind
DATA_PATH_KIND_RDMA: DataPathKind

class OptimizerSpec(_message.Message):
    __slots__ = ("kind", "lr", "eps", "beta1", "beta2")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    kind: OptimizerKind
    lr: float
    eps: float
    beta1: float
    beta2: float
    def __init__(self, kind: _Optional[_Union[OptimizerKind, str]] = ..., lr: _Optional[float] = ..., eps: _Optional[float] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ...) -> None: ...

class InitializerSpec(_message.Message):
    __slots__ = ("kind", "scale", "seed")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    kind: InitializerKind
    scale: float
    seed: int
    def __init__(self, kind: _Optional[_Union[InitializerKind, str]] = ..., scale: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class TableSpec(_message.Message):
    __slots__ = ("dim", "capacity", "optimizer", "initializer", "missing_keys")
    DIM_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    MISSING_KEYS_FIELD_NUMBER: _ClassVar[int]
    dim: int
    capacity: int
    optimizer: OptimizerSpec
    initializer: InitializerSpec
    missing_keys: MissingKeys
    def __init__(self, dim: _Optional[int] = ..., capacity: _Optional[int] = ..., optimizer: _Optional[_Union[OptimizerSpec, _Mapping]] = ..., initializer: _Optional[_Union[InitializerSpec, _Mapping]] = ..., missing_keys: _Optional[_Union[MissingKeys, str]] = ...) -> None: ...

class TableInfo(_message.Message):
    __slots__ = ("name", "spec", "rows", "state_floats", "file_bytes", "recovery_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STATE_FLOATS_FIELD_NUMBER: _ClassVar[int]
    FILE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: TableSpec
    rows: int
    state_floats: int
    file_bytes: int
    recovery_seconds: float
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[TableSpec, _Mapping]] = ..., rows: _Optional[int] = ..., state_floats: _Optional[int] = ..., file_bytes: _Optional[int] = ..., recovery_seconds: _Optional[float] = ...) -> None: ...

class CreateTableRequest(_message.Message):
    __slots__ = ("name", "spec", "if_not_exists")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    IF_NOT_EXISTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: TableSpec
    if_not_exists: bool
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[TableSpec, _Mapping]] = ..., if_not_exists: _Optional[bool] = ...) -> None: ...

class DescribeTableRequest(_message.Message):
    __slots__ = ("table",)
    TABLE_FIELD_NUMBER: _ClassVar[int]
    table: str
    def __init__(self, table: _Optional[str] = ...) -> None: ...

class ListTablesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTablesResponse(_message.Message):
    __slots__ = ("tables",)
    TABLES_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableInfo]
    def __init__(self, tables: _Optional[_Iterable[_Union[TableInfo, _Mapping]]] = ...) -> None: ...

class DropTableRequest(_message.Message):
    __slots__ = ("table",)
    TABLE_FIELD_NUMBER: _ClassVar[int]
    table: str
    def __init__(self, table: _Optional[str] = ...) -> None: ...

class DropTableResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("table", "keys", "with_state")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    WITH_STATE_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: bytes
    with_state: bool
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[bytes] = ..., with_state: _Optional[bool] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("rows", "state", "found")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    rows: bytes
    state: bytes
    found: bytes
    def __init__(self, rows: _Optional[bytes] = ..., state: _Optional[bytes] = ..., found: _Optional[bytes] = ...) -> None: ...

class UpdateRequest(_message.Message):
    __slots__ = ("table", "keys", "grads", "counts")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    GRADS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: bytes
    grads: bytes
    counts: bytes
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[bytes] = ..., grads: _Optional[bytes] = ..., counts: _Optional[bytes] = ...) -> None: ...

class UpdateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RefreshStaleRequest(_message.Message):
    __slots__ = ("table", "keys", "versions", "bound", "with_state")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    WITH_STATE_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: bytes
    versions: bytes
    bound: int
    with_state: bool
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[bytes] = ..., versions: _Optional[bytes] = ..., bound: _Optional[int] = ..., with_state: _Optional[bool] = ...) -> None: ...

class RefreshStaleResponse(_message.Message):
    __slots__ = ("positions", "versions", "rows", "state")
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    positions: bytes
    versions: bytes
    rows: bytes
    state: bytes
    def __init__(self, positions: _Optional[bytes] = ..., versions: _Optional[bytes] = ..., rows: _Optional[bytes] = ..., state: _Optional[bytes] = ...) -> None: ...

class AssignRequest(_message.Message):
    __slots__ = ("table", "keys", "rows", "state")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: bytes
    rows: bytes
    state: bytes
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[bytes] = ..., rows: _Optional[bytes] = ..., state: _Optional[bytes] = ...) -> None: ...

class AssignResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("table", "keys")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: bytes
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[bytes] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("table", "chunk_rows")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ROWS_FIELD_NUMBER: _ClassVar[int]
    table: str
    chunk_rows: int
    def __init__(self, table: _Optional[str] = ..., chunk_rows: _Optional[int] = ...) -> None: ...

class ExportResponse(_message.Message):
    __slots__ = ("keys", "rows", "state")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    keys: bytes
    rows: bytes
    state: bytes
    def __init__(self, keys: _Optional[bytes] = ..., rows: _Optional[bytes] = ..., state: _Optional[bytes] = ...) -> None: ...

class ImportRequest(_message.Message):
    __slots__ = ("table", "keys", "rows", "state")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: bytes
    rows: bytes
    state: bytes
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[bytes] = ..., rows: _Optional[bytes] = ..., state: _Optional[bytes] = ...) -> None: ...

class ImportResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    def __init__(self, rows: _Optional[int] = ...) -> None: ...

class GetShardStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DataPath(_message.Message):
    __slots__ = ("kind", "address")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    kind: DataPathKind
    address: str
    def __init__(self, kind: _Optional[_Union[DataPathKind, str]] = ..., address: _Optional[str] = ...) -> None: ...

class OperationStats(_message.Message):
    __slots__ = ("operation", "requests", "errors", "keys")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    operation: str
    requests: int
    errors: int
    keys: int
    def __init__(self, operation: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., keys: _Optional[int] = ...) -> None: ...

class ShardStats(_message.Message):
    __slots__ = ("shard_id", "data_paths", "tables", "operations", "uptime_seconds", "max_batch_keys", "max_message_bytes", "unopenable_tables")
    class UnopenableTablesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_PATHS_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_KEYS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    UNOPENABLE_TABLES_FIELD_NUMBER: _ClassVar[int]
    shard_id: str
    data_paths: _containers.RepeatedCompositeFieldContainer[DataPath]
    tables: _containers.RepeatedCompositeFieldContainer[TableInfo]
    operations: _containers.RepeatedCompositeFieldContainer[OperationStats]
    uptime_seconds: float
    max_batch_keys: int
    max_message_bytes: int
    unopenable_tables: _containers.ScalarMap[str, str]
    def __init__(self, shard_id: _Optional[str] = ..., data_paths: _Optional[_Iterable[_Union[DataPath, _Mapping]]] = ..., tables: _Optional[_Iterable[_Union[TableInfo, _Mapping]]] = ..., operations: _Optional[_Iterable[_Union[OperationStats, _Mapping]]] = ..., uptime_seconds: _Optional[float] = ..., max_batch_keys: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., unopenable_tables: _Optional[_Mapping[str, str]] = ...) -> None: ...
