from services.proto.nnmd.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ComputeRequest(_message.Message):
    __slots__ = ("structures", "properties", "destination", "provenance")
    STRUCTURES_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    structures: _containers.RepeatedCompositeFieldContainer[_common_pb2.Structure]
    properties: _containers.RepeatedScalarFieldContainer[str]
    destination: _common_pb2.StoreRef
    provenance: _containers.RepeatedCompositeFieldContainer[_common_pb2.Provenance]
    def __init__(self, structures: _Optional[_Iterable[_Union[_common_pb2.Structure, _Mapping]]] = ..., properties: _Optional[_Iterable[str]] = ..., destination: _Optional[_Union[_common_pb2.StoreRef, _Mapping]] = ..., provenance: _Optional[_Iterable[_Union[_common_pb2.Provenance, _Mapping]]] = ...) -> None: ...

class ComputeResponse(_message.Message):
    __slots__ = ("labels", "reference_settings_hash", "record_ids", "wall_time_s")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_SETTINGS_HASH_FIELD_NUMBER: _ClassVar[int]
    RECORD_IDS_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_S_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[_common_pb2.Labels]
    reference_settings_hash: str
    record_ids: _containers.RepeatedScalarFieldContainer[int]
    wall_time_s: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, labels: _Optional[_Iterable[_Union[_common_pb2.Labels, _Mapping]]] = ..., reference_settings_hash: _Optional[str] = ..., record_ids: _Optional[_Iterable[int]] = ..., wall_time_s: _Optional[_Iterable[float]] = ...) -> None: ...
