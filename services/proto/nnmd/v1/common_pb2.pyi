from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SourceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_KIND_UNSPECIFIED: _ClassVar[SourceKind]
    SOURCE_KIND_AIMD: _ClassVar[SourceKind]
    SOURCE_KIND_HMC: _ClassVar[SourceKind]
    SOURCE_KIND_MC: _ClassVar[SourceKind]
    SOURCE_KIND_IMPORT: _ClassVar[SourceKind]
SOURCE_KIND_UNSPECIFIED: SourceKind
SOURCE_KIND_AIMD: SourceKind
SOURCE_KIND_HMC: SourceKind
SOURCE_KIND_MC: SourceKind
SOURCE_KIND_IMPORT: SourceKind

class Structure(_message.Message):
    __slots__ = ("positions_angstrom", "numbers", "cell_angstrom", "pbc", "velocities_angstrom_per_fs", "id", "restart_from_id")
    POSITIONS_ANGSTROM_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    CELL_ANGSTROM_FIELD_NUMBER: _ClassVar[int]
    PBC_FIELD_NUMBER: _ClassVar[int]
    VELOCITIES_ANGSTROM_PER_FS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    RESTART_FROM_ID_FIELD_NUMBER: _ClassVar[int]
    positions_angstrom: _containers.RepeatedScalarFieldContainer[float]
    numbers: _containers.RepeatedScalarFieldContainer[int]
    cell_angstrom: _containers.RepeatedScalarFieldContainer[float]
    pbc: _containers.RepeatedScalarFieldContainer[bool]
    velocities_angstrom_per_fs: _containers.RepeatedScalarFieldContainer[float]
    id: str
    restart_from_id: str
    def __init__(self, positions_angstrom: _Optional[_Iterable[float]] = ..., numbers: _Optional[_Iterable[int]] = ..., cell_angstrom: _Optional[_Iterable[float]] = ..., pbc: _Optional[_Iterable[bool]] = ..., velocities_angstrom_per_fs: _Optional[_Iterable[float]] = ..., id: _Optional[str] = ..., restart_from_id: _Optional[str] = ...) -> None: ...

class Labels(_message.Message):
    __slots__ = ("energy_ev", "forces_ev_per_angstrom", "stress_ev_per_angstrom3")
    ENERGY_EV_FIELD_NUMBER: _ClassVar[int]
    FORCES_EV_PER_ANGSTROM_FIELD_NUMBER: _ClassVar[int]
    STRESS_EV_PER_ANGSTROM3_FIELD_NUMBER: _ClassVar[int]
    energy_ev: float
    forces_ev_per_angstrom: _containers.RepeatedScalarFieldContainer[float]
    stress_ev_per_angstrom3: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, energy_ev: _Optional[float] = ..., forces_ev_per_angstrom: _Optional[_Iterable[float]] = ..., stress_ev_per_angstrom3: _Optional[_Iterable[float]] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("campaign", "chain", "step", "source", "model_version", "accepted", "reference_settings_hash", "wall_time_s")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_SETTINGS_HASH_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_S_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    chain: str
    step: int
    source: SourceKind
    model_version: int
    accepted: bool
    reference_settings_hash: str
    wall_time_s: float
    def __init__(self, campaign: _Optional[str] = ..., chain: _Optional[str] = ..., step: _Optional[int] = ..., source: _Optional[_Union[SourceKind, str]] = ..., model_version: _Optional[int] = ..., accepted: _Optional[bool] = ..., reference_settings_hash: _Optional[str] = ..., wall_time_s: _Optional[float] = ...) -> None: ...

class StoreRef(_message.Message):
    __slots__ = ("url",)
    URL_FIELD_NUMBER: _ClassVar[int]
    url: str
    def __init__(self, url: _Optional[str] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("store", "version")
    STORE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    store: StoreRef
    version: int
    def __init__(self, store: _Optional[_Union[StoreRef, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class DatasetRef(_message.Message):
    __slots__ = ("store", "first_record", "end_record", "campaign")
    STORE_FIELD_NUMBER: _ClassVar[int]
    FIRST_RECORD_FIELD_NUMBER: _ClassVar[int]
    END_RECORD_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    store: StoreRef
    first_record: int
    end_record: int
    campaign: str
    def __init__(self, store: _Optional[_Union[StoreRef, _Mapping]] = ..., first_record: _Optional[int] = ..., end_record: _Optional[int] = ..., campaign: _Optional[str] = ...) -> None: ...

class TrajectoryRef(_message.Message):
    __slots__ = ("store", "name")
    STORE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    store: StoreRef
    name: str
    def __init__(self, store: _Optional[_Union[StoreRef, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("field", "reason", "hint")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    field: str
    reason: str
    hint: str
    def __init__(self, field: _Optional[str] = ..., reason: _Optional[str] = ..., hint: _Optional[str] = ...) -> None: ...
