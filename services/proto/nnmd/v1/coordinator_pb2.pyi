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

class InputFile(_message.Message):
    __slots__ = ("name", "content")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    content: bytes
    def __init__(self, name: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class StartRequest(_message.Message):
    __slots__ = ("config_json", "store", "campaign", "files", "validate_only")
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    store: _common_pb2.StoreRef
    campaign: str
    files: _containers.RepeatedCompositeFieldContainer[InputFile]
    validate_only: bool
    def __init__(self, config_json: _Optional[str] = ..., store: _Optional[_Union[_common_pb2.StoreRef, _Mapping]] = ..., campaign: _Optional[str] = ..., files: _Optional[_Iterable[_Union[InputFile, _Mapping]]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("campaign", "state", "chains", "n_labels", "latest_model", "message", "md_executors", "reference_workers")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    N_LABELS_FIELD_NUMBER: _ClassVar[int]
    LATEST_MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MD_EXECUTORS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_WORKERS_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    state: CampaignState
    chains: _containers.RepeatedCompositeFieldContainer[ChainStatus]
    n_labels: int
    latest_model: _common_pb2.ModelRef
    message: str
    md_executors: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    reference_workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    def __init__(self, campaign: _Optional[str] = ..., state: _Optional[_Union[CampaignState, str]] = ..., chains: _Optional[_Iterable[_Union[ChainStatus, _Mapping]]] = ..., n_labels: _Optional[int] = ..., latest_model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., message: _Optional[str] = ..., md_executors: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., reference_workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("address", "calls", "kind")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    address: str
    calls: int
    kind: str
    def __init__(self, address: _Optional[str] = ..., calls: _Optional[int] = ..., kind: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    def __init__(self, campaign: _Optional[str] = ...) -> None: ...

class CampaignEvent(_message.Message):
    __slots__ = ("campaign", "kind", "chain", "step", "accepted", "model_version", "state", "message", "time_s", "energy_ref_ev", "volume_angstrom3", "n_md_steps", "acceptance_rate", "phase", "status", "n_labels", "energy_rmse_mev_per_atom", "force_rmse_mev_per_angstrom")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    ENERGY_REF_EV_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ANGSTROM3_FIELD_NUMBER: _ClassVar[int]
    N_MD_STEPS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_RATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    N_LABELS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_RMSE_MEV_PER_ATOM_FIELD_NUMBER: _ClassVar[int]
    FORCE_RMSE_MEV_PER_ANGSTROM_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    kind: str
    chain: str
    step: int
    accepted: bool
    model_version: int
    state: CampaignState
    message: str
    time_s: float
    energy_ref_ev: float
    volume_angstrom3: float
    n_md_steps: int
    acceptance_rate: float
    phase: str
    status: str
    n_labels: int
    energy_rmse_mev_per_atom: float
    force_rmse_mev_per_angstrom: float
    def __init__(self, campaign: _Optional[str] = ..., kind: _Optional[str] = ..., chain: _Optional[str] = ..., step: _Optional[int] = ..., accepted: _Optional[bool] = ..., model_version: _Optional[int] = ..., state: _Optional[_Union[CampaignState, str]] = ..., message: _Optional[str] = ..., time_s: _Optional[float] = ..., energy_ref_ev: _Optional[float] = ..., volume_angstrom3: _Optional[float] = ..., n_md_steps: _Optional[int] = ..., acceptance_rate: _Optional[float] = ..., phase: _Optional[str] = ..., status: _Optional[str] = ..., n_labels: _Optional[int] = ..., energy_rmse_mev_per_atom: _Optional[float] = ..., force_rmse_mev_per_angstrom: _Optional[float] = ...) -> None: ...

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
    __slots__ = ("campaign", "version", "destination", "format", "return_content")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    RETURN_CONTENT_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    version: int
    destination: str
    format: str
    return_content: bool
    def __init__(self, campaign: _Optional[str] = ..., version: _Optional[int] = ..., destination: _Optional[str] = ..., format: _Optional[str] = ..., return_content: _Optional[bool] = ...) -> None: ...

class ExportModelResponse(_message.Message):
    __slots__ = ("model", "destination", "content", "filename")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    destination: str
    content: bytes
    filename: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., destination: _Optional[str] = ..., content: _Optional[bytes] = ..., filename: _Optional[str] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CampaignSummary(_message.Message):
    __slots__ = ("campaign", "state", "n_chains", "steps_done", "steps_total", "acceptance_rate", "n_labels", "model_version", "reference", "store_url")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    N_CHAINS_FIELD_NUMBER: _ClassVar[int]
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_RATE_FIELD_NUMBER: _ClassVar[int]
    N_LABELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    STORE_URL_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    state: CampaignState
    n_chains: int
    steps_done: int
    steps_total: int
    acceptance_rate: float
    n_labels: int
    model_version: int
    reference: str
    store_url: str
    def __init__(self, campaign: _Optional[str] = ..., state: _Optional[_Union[CampaignState, str]] = ..., n_chains: _Optional[int] = ..., steps_done: _Optional[int] = ..., steps_total: _Optional[int] = ..., acceptance_rate: _Optional[float] = ..., n_labels: _Optional[int] = ..., model_version: _Optional[int] = ..., reference: _Optional[str] = ..., store_url: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("campaigns",)
    CAMPAIGNS_FIELD_NUMBER: _ClassVar[int]
    campaigns: _containers.RepeatedCompositeFieldContainer[CampaignSummary]
    def __init__(self, campaigns: _Optional[_Iterable[_Union[CampaignSummary, _Mapping]]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("campaign", "offset", "limit", "max_points")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    offset: int
    limit: int
    max_points: int
    def __init__(self, campaign: _Optional[str] = ..., offset: _Optional[int] = ..., limit: _Optional[int] = ..., max_points: _Optional[int] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    def __init__(self, campaign: _Optional[str] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("html",)
    HTML_FIELD_NUMBER: _ClassVar[int]
    html: bytes
    def __init__(self, html: _Optional[bytes] = ...) -> None: ...
