from services.proto.nnmd.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CampaignState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAMPAIGN_STATE_UNSPECIFIED: _ClassVar[CampaignState]
    CAMPAIGN_STATE_PENDING: _ClassVar[CampaignState]
    CAMPAIGN_STATE_RUNNING: _ClassVar[CampaignState]
    CAMPAIGN_STATE_STOPPING: _ClassVar[CampaignState]
    CAMPAIGN_STATE_FINISHED: _ClassVar[CampaignState]
    CAMPAIGN_STATE_FAILED: _ClassVar[CampaignState]
    CAMPAIGN_STATE_STOPPED: _ClassVar[CampaignState]
CAMPAIGN_STATE_UNSPECIFIED: CampaignState
CAMPAIGN_STATE_PENDING: CampaignState
CAMPAIGN_STATE_RUNNING: CampaignState
CAMPAIGN_STATE_STOPPING: CampaignState
CAMPAIGN_STATE_FINISHED: CampaignState
CAMPAIGN_STATE_FAILED: CampaignState
CAMPAIGN_STATE_STOPPED: CampaignState

class StartRequest(_message.Message):
    __slots__ = ("config_json", "store", "campaign")
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    store: _common_pb2.StoreRef
    campaign: str
    def __init__(self, config_json: _Optional[str] = ..., store: _Optional[_Union[_common_pb2.StoreRef, _Mapping]] = ..., campaign: _Optional[str] = ...) -> None: ...

class StartResponse(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    def __init__(self, campaign: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    def __init__(self, campaign: _Optional[str] = ...) -> None: ...

class ChainStatus(_message.Message):
    __slots__ = ("chain", "step", "acceptance_rate", "n_md_steps", "model_version", "temperature_k", "phase", "state", "failure")
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_RATE_FIELD_NUMBER: _ClassVar[int]
    N_MD_STEPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_K_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    chain: str
    step: int
    acceptance_rate: float
    n_md_steps: int
    model_version: int
    temperature_k: float
    phase: str
    state: str
    failure: str
    def __init__(self, chain: _Optional[str] = ..., step: _Optional[int] = ..., acceptance_rate: _Optional[float] = ..., n_md_steps: _Optional[int] = ..., model_version: _Optional[int] = ..., temperature_k: _Optional[float] = ..., phase: _Optional[str] = ..., state: _Optional[str] = ..., failure: _Optional[str] = ...) -> None: ...

class CampaignStatus(_message.Message):
    __slots__ = ("campaign", "state", "chains", "n_labels", "latest_model", "message")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    N_LABELS_FIELD_NUMBER: _ClassVar[int]
    LATEST_MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    state: CampaignState
    chains: _containers.RepeatedCompositeFieldContainer[ChainStatus]
    n_labels: int
    latest_model: _common_pb2.ModelRef
    message: str
    def __init__(self, campaign: _Optional[str] = ..., state: _Optional[_Union[CampaignState, str]] = ..., chains: _Optional[_Iterable[_Union[ChainStatus, _Mapping]]] = ..., n_labels: _Optional[int] = ..., latest_model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    def __init__(self, campaign: _Optional[str] = ...) -> None: ...

class CampaignEvent(_message.Message):
    __slots__ = ("campaign", "kind", "chain", "step", "accepted", "model_version", "state", "message", "time_s")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    kind: str
    chain: str
    step: int
    accepted: bool
    model_version: int
    state: CampaignState
    message: str
    time_s: float
    def __init__(self, campaign: _Optional[str] = ..., kind: _Optional[str] = ..., chain: _Optional[str] = ..., step: _Optional[int] = ..., accepted: _Optional[bool] = ..., model_version: _Optional[int] = ..., state: _Optional[_Union[CampaignState, str]] = ..., message: _Optional[str] = ..., time_s: _Optional[float] = ...) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    def __init__(self, campaign: _Optional[str] = ...) -> None: ...

class StopResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: CampaignState
    def __init__(self, state: _Optional[_Union[CampaignState, str]] = ...) -> None: ...

class ExportModelRequest(_message.Message):
    __slots__ = ("campaign", "version", "destination", "format")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    version: int
    destination: str
    format: str
    def __init__(self, campaign: _Optional[str] = ..., version: _Optional[int] = ..., destination: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class ExportModelResponse(_message.Message):
    __slots__ = ("model", "destination")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    destination: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., destination: _Optional[str] = ...) -> None: ...
