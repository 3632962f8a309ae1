from services.proto.nnmd.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainRequest(_message.Message):
    __slots__ = ("dataset", "warm_start", "output", "config_json", "campaign")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    WARM_START_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    dataset: _common_pb2.DatasetRef
    warm_start: _common_pb2.ModelRef
    output: _common_pb2.StoreRef
    config_json: str
    campaign: str
    def __init__(self, dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., warm_start: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., output: _Optional[_Union[_common_pb2.StoreRef, _Mapping]] = ..., config_json: _Optional[str] = ..., campaign: _Optional[str] = ...) -> None: ...

class TrainProgress(_message.Message):
    __slots__ = ("epoch", "loss", "train_energy_rmse_ev_per_atom", "train_force_rmse_ev_per_angstrom", "valid_energy_rmse_ev_per_atom", "valid_force_rmse_ev_per_angstrom", "done", "model", "message")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ENERGY_RMSE_EV_PER_ATOM_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FORCE_RMSE_EV_PER_ANGSTROM_FIELD_NUMBER: _ClassVar[int]
    VALID_ENERGY_RMSE_EV_PER_ATOM_FIELD_NUMBER: _ClassVar[int]
    VALID_FORCE_RMSE_EV_PER_ANGSTROM_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    loss: float
    train_energy_rmse_ev_per_atom: float
    train_force_rmse_ev_per_angstrom: float
    valid_energy_rmse_ev_per_atom: float
    valid_force_rmse_ev_per_angstrom: float
    done: bool
    model: _common_pb2.ModelRef
    message: str
    def __init__(self, epoch: _Optional[int] = ..., loss: _Optional[float] = ..., train_energy_rmse_ev_per_atom: _Optional[float] = ..., train_force_rmse_ev_per_angstrom: _Optional[float] = ..., valid_energy_rmse_ev_per_atom: _Optional[float] = ..., valid_force_rmse_ev_per_angstrom: _Optional[float] = ..., done: _Optional[bool] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...
