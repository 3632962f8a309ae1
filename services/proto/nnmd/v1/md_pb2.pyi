from services.proto.nnmd.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Ensemble(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENSEMBLE_UNSPECIFIED: _ClassVar[Ensemble]
    ENSEMBLE_NVE: _ClassVar[Ensemble]
    ENSEMBLE_NVT_LANGEVIN: _ClassVar[Ensemble]
    ENSEMBLE_NVT_BUSSI: _ClassVar[Ensemble]
    ENSEMBLE_NPT_ISOTROPIC: _ClassVar[Ensemble]
    ENSEMBLE_NPT_ANISOTROPIC: _ClassVar[Ensemble]
ENSEMBLE_UNSPECIFIED: Ensemble
ENSEMBLE_NVE: Ensemble
ENSEMBLE_NVT_LANGEVIN: Ensemble
ENSEMBLE_NVT_BUSSI: Ensemble
ENSEMBLE_NPT_ISOTROPIC: Ensemble
ENSEMBLE_NPT_ANISOTROPIC: Ensemble

class Segment(_message.Message):
    __slots__ = ("chain", "start", "n_steps")
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    N_STEPS_FIELD_NUMBER: _ClassVar[int]
    chain: str
    start: _common_pb2.Structure
    n_steps: int
    def __init__(self, chain: _Optional[str] = ..., start: _Optional[_Union[_common_pb2.Structure, _Mapping]] = ..., n_steps: _Optional[int] = ...) -> None: ...

class RunSegmentsRequest(_message.Message):
    __slots__ = ("model", "segments", "timestep_fs", "engine")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    TIMESTEP_FS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    timestep_fs: float
    engine: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., timestep_fs: _Optional[float] = ..., engine: _Optional[str] = ...) -> None: ...

class SegmentResult(_message.Message):
    __slots__ = ("chain", "end", "start_potential_energy_ev", "start_kinetic_energy_ev", "end_potential_energy_ev", "end_kinetic_energy_ev")
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    START_POTENTIAL_ENERGY_EV_FIELD_NUMBER: _ClassVar[int]
    START_KINETIC_ENERGY_EV_FIELD_NUMBER: _ClassVar[int]
    END_POTENTIAL_ENERGY_EV_FIELD_NUMBER: _ClassVar[int]
    END_KINETIC_ENERGY_EV_FIELD_NUMBER: _ClassVar[int]
    chain: str
    end: _common_pb2.Structure
    start_potential_energy_ev: float
    start_kinetic_energy_ev: float
    end_potential_energy_ev: float
    end_kinetic_energy_ev: float
    def __init__(self, chain: _Optional[str] = ..., end: _Optional[_Union[_common_pb2.Structure, _Mapping]] = ..., start_potential_energy_ev: _Optional[float] = ..., start_kinetic_energy_ev: _Optional[float] = ..., end_potential_energy_ev: _Optional[float] = ..., end_kinetic_energy_ev: _Optional[float] = ...) -> None: ...

class RunSegmentsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SegmentResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SegmentResult, _Mapping]]] = ...) -> None: ...

class ProductionRequest(_message.Message):
    __slots__ = ("model", "initial", "ensemble", "temperature_k", "pressure_gpa", "timestep_fs", "n_steps", "sample_interval", "trajectory", "engine", "seed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INITIAL_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_K_FIELD_NUMBER: _ClassVar[int]
    PRESSURE_GPA_FIELD_NUMBER: _ClassVar[int]
    TIMESTEP_FS_FIELD_NUMBER: _ClassVar[int]
    N_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    initial: _common_pb2.Structure
    ensemble: Ensemble
    temperature_k: float
    pressure_gpa: float
    timestep_fs: float
    n_steps: int
    sample_interval: int
    trajectory: _common_pb2.TrajectoryRef
    engine: str
    seed: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., initial: _Optional[_Union[_common_pb2.Structure, _Mapping]] = ..., ensemble: _Optional[_Union[Ensemble, str]] = ..., temperature_k: _Optional[float] = ..., pressure_gpa: _Optional[float] = ..., timestep_fs: _Optional[float] = ..., n_steps: _Optional[int] = ..., sample_interval: _Optional[int] = ..., trajectory: _Optional[_Union[_common_pb2.TrajectoryRef, _Mapping]] = ..., engine: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class ProductionProgress(_message.Message):
    __slots__ = ("step", "time_fs", "temperature_k", "potential_energy_ev", "volume_angstrom3", "done", "trajectory", "frames_written")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_FS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_K_FIELD_NUMBER: _ClassVar[int]
    POTENTIAL_ENERGY_EV_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ANGSTROM3_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    FRAMES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    step: int
    time_fs: float
    temperature_k: float
    potential_energy_ev: float
    volume_angstrom3: float
    done: bool
    trajectory: _common_pb2.TrajectoryRef
    frames_written: int
    def __init__(self, step: _Optional[int] = ..., time_fs: _Optional[float] = ..., temperature_k: _Optional[float] = ..., potential_energy_ev: _Optional[float] = ..., volume_angstrom3: _Optional[float] = ..., done: _Optional[bool] = ..., trajectory: _Optional[_Union[_common_pb2.TrajectoryRef, _Mapping]] = ..., frames_written: _Optional[int] = ...) -> None: ...
