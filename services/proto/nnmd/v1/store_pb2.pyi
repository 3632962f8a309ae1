from services.proto.nnmd.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StoreInfoRequest(_message.Message):
    __slots__ = ("store",)
    STORE_FIELD_NUMBER: _ClassVar[int]
    store: _common_pb2.StoreRef
    def __init__(self, store: _Optional[_Union[_common_pb2.StoreRef, _Mapping]] = ...) -> None: ...

class StoreInfo(_message.Message):
    __slots__ = ("url", "schema", "structures", "atoms", "campaigns", "latest_model_version", "trajectories")
    class CampaignsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class TrajectoriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    URL_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    STRUCTURES_FIELD_NUMBER: _ClassVar[int]
    ATOMS_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGNS_FIELD_NUMBER: _ClassVar[int]
    LATEST_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    url: str
    schema: int
    structures: int
    atoms: int
    campaigns: _containers.ScalarMap[str, int]
    latest_model_version: int
    trajectories: _containers.ScalarMap[str, int]
    def __init__(self, url: _Optional[str] = ..., schema: _Optional[int] = ..., structures: _Optional[int] = ..., atoms: _Optional[int] = ..., campaigns: _Optional[_Mapping[str, int]] = ..., latest_model_version: _Optional[int] = ..., trajectories: _Optional[_Mapping[str, int]] = ...) -> None: ...
