from vatlas_wire.v1 import bundles_pb2 as _bundles_pb2
from vatlas_wire.v1 import common_pb2 as _common_pb2
from vatlas_wire.v1 import edits_pb2 as _edits_pb2
from vatlas_wire.v1 import render_pb2 as _render_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateSessionRequest(_message.Message):
    __slots__ = ("bundle", "document")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    bundle: str
    document: _edits_pb2.EditDocument
    def __init__(self, bundle: _Optional[str] = ..., document: _Optional[_Union[_edits_pb2.EditDocument, _Mapping]] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "bundle", "join_token", "seq", "participants")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    bundle: str
    join_token: str
    seq: int
    participants: int
    def __init__(self, session_id: _Optional[str] = ..., bundle: _Optional[str] = ..., join_token: _Optional[str] = ..., seq: _Optional[int] = ..., participants: _Optional[int] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ...) -> None: ...

class Participant(_message.Message):
    __slots__ = ("participant_id", "name", "color", "cursor", "frame", "tool")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    name: str
    color: str
    cursor: _edits_pb2.Vec2
    frame: int
    tool: str
    def __init__(self, participant_id: _Optional[str] = ..., name: _Optional[str] = ..., color: _Optional[str] = ..., cursor: _Optional[_Union[_edits_pb2.Vec2, _Mapping]] = ..., frame: _Optional[int] = ..., tool: _Optional[str] = ...) -> None: ...

class Join(_message.Message):
    __slots__ = ("session_id", "join_token", "name", "color", "last_seq", "participant_id", "resume_key")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_KEY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    join_token: str
    name: str
    color: str
    last_seq: int
    participant_id: str
    resume_key: str
    def __init__(self, session_id: _Optional[str] = ..., join_token: _Optional[str] = ..., name: _Optional[str] = ..., color: _Optional[str] = ..., last_seq: _Optional[int] = ..., participant_id: _Optional[str] = ..., resume_key: _Optional[str] = ...) -> None: ...

class Undo(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Redo(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PresenceUpdate(_message.Message):
    __slots__ = ("cursor", "frame", "tool", "name", "color")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    cursor: _edits_pb2.Vec2
    frame: int
    tool: str
    name: str
    color: str
    def __init__(self, cursor: _Optional[_Union[_edits_pb2.Vec2, _Mapping]] = ..., frame: _Optional[int] = ..., tool: _Optional[str] = ..., name: _Optional[str] = ..., color: _Optional[str] = ...) -> None: ...

class Leave(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("join", "op", "undo", "redo", "presence", "leave")
    JOIN_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    UNDO_FIELD_NUMBER: _ClassVar[int]
    REDO_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    join: Join
    op: _edits_pb2.EditOp
    undo: Undo
    redo: Redo
    presence: PresenceUpdate
    leave: Leave
    def __init__(self, join: _Optional[_Union[Join, _Mapping]] = ..., op: _Optional[_Union[_edits_pb2.EditOp, _Mapping]] = ..., undo: _Optional[_Union[Undo, _Mapping]] = ..., redo: _Optional[_Union[Redo, _Mapping]] = ..., presence: _Optional[_Union[PresenceUpdate, _Mapping]] = ..., leave: _Optional[_Union[Leave, _Mapping]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("session", "document", "participants", "participant_id", "resume_key", "authors")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_KEY_FIELD_NUMBER: _ClassVar[int]
    AUTHORS_FIELD_NUMBER: _ClassVar[int]
    session: SessionInfo
    document: _edits_pb2.EditDocument
    participants: _containers.RepeatedCompositeFieldContainer[Participant]
    participant_id: str
    resume_key: str
    authors: _containers.RepeatedCompositeFieldContainer[LayerAuthor]
    def __init__(self, session: _Optional[_Union[SessionInfo, _Mapping]] = ..., document: _Optional[_Union[_edits_pb2.EditDocument, _Mapping]] = ..., participants: _Optional[_Iterable[_Union[Participant, _Mapping]]] = ..., participant_id: _Optional[str] = ..., resume_key: _Optional[str] = ..., authors: _Optional[_Iterable[_Union[LayerAuthor, _Mapping]]] = ...) -> None: ...

class LayerAuthor(_message.Message):
    __slots__ = ("op_id", "participant_id", "name", "color")
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    participant_id: str
    name: str
    color: str
    def __init__(self, op_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., name: _Optional[str] = ..., color: _Optional[str] = ...) -> None: ...

class OpAccepted(_message.Message):
    __slots__ = ("op_id", "seq")
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    seq: int
    def __init__(self, op_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class OpRejected(_message.Message):
    __slots__ = ("op_id", "error")
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    error: _common_pb2.Error
    def __init__(self, op_id: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ...) -> None: ...

class OpApplied(_message.Message):
    __slots__ = ("seq", "participant_id", "op")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    seq: int
    participant_id: str
    op: _edits_pb2.EditOp
    def __init__(self, seq: _Optional[int] = ..., participant_id: _Optional[str] = ..., op: _Optional[_Union[_edits_pb2.EditOp, _Mapping]] = ...) -> None: ...

class PresenceEvent(_message.Message):
    __slots__ = ("participant", "left")
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    participant: Participant
    left: bool
    def __init__(self, participant: _Optional[_Union[Participant, _Mapping]] = ..., left: _Optional[bool] = ...) -> None: ...

class ServerEvent(_message.Message):
    __slots__ = ("snapshot", "accepted", "rejected", "applied", "presence", "error")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    accepted: OpAccepted
    rejected: OpRejected
    applied: OpApplied
    presence: PresenceEvent
    error: _common_pb2.Error
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., accepted: _Optional[_Union[OpAccepted, _Mapping]] = ..., rejected: _Optional[_Union[OpRejected, _Mapping]] = ..., applied: _Optional[_Union[OpApplied, _Mapping]] = ..., presence: _Optional[_Union[PresenceEvent, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "token", "client")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    token: str
    client: str
    def __init__(self, protocol_version: _Optional[int] = ..., token: _Optional[str] = ..., client: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("protocol_version", "server_version")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    server_version: str
    def __init__(self, protocol_version: _Optional[int] = ..., server_version: _Optional[str] = ...) -> None: ...

class StopPlayback(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WsRequest(_message.Message):
    __slots__ = ("request_id", "hello", "list_bundles", "create_session", "session", "render", "playback", "stop_playback", "export", "load_bundle", "list_sessions", "bundle_info", "upload", "upload_frame", "start_fit", "list_fits", "attach_fit", "cancel_fit")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    LIST_BUNDLES_FIELD_NUMBER: _ClassVar[int]
    CREATE_SESSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    RENDER_FIELD_NUMBER: _ClassVar[int]
    PLAYBACK_FIELD_NUMBER: _ClassVar[int]
    STOP_PLAYBACK_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    LOAD_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    LIST_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_INFO_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FRAME_FIELD_NUMBER: _ClassVar[int]
    START_FIT_FIELD_NUMBER: _ClassVar[int]
    LIST_FITS_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIT_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    hello: Hello
    list_bundles: _bundles_pb2.ListBundlesRequest
    create_session: CreateSessionRequest
    session: ClientMessage
    render: _render_pb2.RenderRequest
    playback: _render_pb2.PlaybackRequest
    stop_playback: StopPlayback
    export: _render_pb2.ExportRequest
    load_bundle: _bundles_pb2.LoadBundleRequest
    list_sessions: ListSessionsRequest
    bundle_info: _bundles_pb2.GetBundleInfoRequest
    upload: _bundles_pb2.UploadChunk
    upload_frame: _bundles_pb2.UploadFrameRequest
    start_fit: _bundles_pb2.StartFitRequest
    list_fits: _bundles_pb2.ListFitsRequest
    attach_fit: _bundles_pb2.AttachFitRequest
    cancel_fit: _bundles_pb2.CancelFitRequest
    def __init__(self, request_id: _Optional[int] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., list_bundles: _Optional[_Union[_bundles_pb2.ListBundlesRequest, _Mapping]] = ..., create_session: _Optional[_Union[CreateSessionRequest, _Mapping]] = ..., session: _Optional[_Union[ClientMessage, _Mapping]] = ..., render: _Optional[_Union[_render_pb2.RenderRequest, _Mapping]] = ..., playback: _Optional[_Union[_render_pb2.PlaybackRequest, _Mapping]] = ..., stop_playback: _Optional[_Union[StopPlayback, _Mapping]] = ..., export: _Optional[_Union[_render_pb2.ExportRequest, _Mapping]] = ..., load_bundle: _Optional[_Union[_bundles_pb2.LoadBundleRequest, _Mapping]] = ..., list_sessions: _Optional[_Union[ListSessionsRequest, _Mapping]] = ..., bundle_info: _Optional[_Union[_bundles_pb2.GetBundleInfoRequest, _Mapping]] = ..., upload: _Optional[_Union[_bundles_pb2.UploadChunk, _Mapping]] = ..., upload_frame: _Optional[_Union[_bundles_pb2.UploadFrameRequest, _Mapping]] = ..., start_fit: _Optional[_Union[_bundles_pb2.StartFitRequest, _Mapping]] = ..., list_fits: _Optional[_Union[_bundles_pb2.ListFitsRequest, _Mapping]] = ..., attach_fit: _Optional[_Union[_bundles_pb2.AttachFitRequest, _Mapping]] = ..., cancel_fit: _Optional[_Union[_bundles_pb2.CancelFitRequest, _Mapping]] = ...) -> None: ...

class WsResponse(_message.Message):
    __slots__ = ("request_id", "welcome", "bundles", "session_info", "event", "frame", "export", "error", "bundle_info", "sessions", "upload_progress", "upload", "upload_frame", "fit", "fits", "fit_info")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    SESSION_INFO_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_INFO_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FRAME_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    FIT_INFO_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    welcome: Welcome
    bundles: _bundles_pb2.ListBundlesResponse
    session_info: SessionInfo
    event: ServerEvent
    frame: _render_pb2.RenderedFrame
    export: _render_pb2.ExportEvent
    error: _common_pb2.Error
    bundle_info: _bundles_pb2.BundleInfo
    sessions: ListSessionsResponse
    upload_progress: _bundles_pb2.UploadProgress
    upload: _bundles_pb2.UploadResult
    upload_frame: _bundles_pb2.UploadFrame
    fit: _bundles_pb2.FitProgress
    fits: _bundles_pb2.ListFitsResponse
    fit_info: _bundles_pb2.FitInfo
    def __init__(self, request_id: _Optional[int] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., bundles: _Optional[_Union[_bundles_pb2.ListBundlesResponse, _Mapping]] = ..., session_info: _Optional[_Union[SessionInfo, _Mapping]] = ..., event: _Optional[_Union[ServerEvent, _Mapping]] = ..., frame: _Optional[_Union[_render_pb2.RenderedFrame, _Mapping]] = ..., export: _Optional[_Union[_render_pb2.ExportEvent, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., bundle_info: _Optional[_Union[_bundles_pb2.BundleInfo, _Mapping]] = ..., sessions: _Optional[_Union[ListSessionsResponse, _Mapping]] = ..., upload_progress: _Optional[_Union[_bundles_pb2.UploadProgress, _Mapping]] = ..., upload: _Optional[_Union[_bundles_pb2.UploadResult, _Mapping]] = ..., upload_frame: _Optional[_Union[_bundles_pb2.UploadFrame, _Mapping]] = ..., fit: _Optional[_Union[_bundles_pb2.FitProgress, _Mapping]] = ..., fits: _Optional[_Union[_bundles_pb2.ListFitsResponse, _Mapping]] = ..., fit_info: _Optional[_Union[_bundles_pb2.FitInfo, _Mapping]] = ...) -> None: ...
