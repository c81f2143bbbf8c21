from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Region(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class RenderRequest(_message.Message):
    __slots__ = ("session_id", "frame", "format", "quality", "scale", "region", "atlas", "request_id", "join_token", "roi_mask_side")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ATLAS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ROI_MASK_SIDE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    frame: int
    format: str
    quality: int
    scale: float
    region: Region
    atlas: bool
    request_id: int
    join_token: str
    roi_mask_side: int
    def __init__(self, session_id: _Optional[str] = ..., frame: _Optional[int] = ..., format: _Optional[str] = ..., quality: _Optional[int] = ..., scale: _Optional[float] = ..., region: _Optional[_Union[Region, _Mapping]] = ..., atlas: _Optional[bool] = ..., request_id: _Optional[int] = ..., join_token: _Optional[str] = ..., roi_mask_side: _Optional[int] = ...) -> None: ...

class RoiMask(_message.Message):
    __slots__ = ("width", "height", "data", "visible", "regions")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    VISIBLE_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    data: bytes
    visible: Region
    regions: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., data: _Optional[bytes] = ..., visible: _Optional[_Union[Region, _Mapping]] = ..., regions: _Optional[bytes] = ...) -> None: ...

class RenderedFrame(_message.Message):
    __slots__ = ("frame", "format", "width", "height", "data", "seq", "request_id", "render_ms", "roi_mask")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RENDER_MS_FIELD_NUMBER: _ClassVar[int]
    ROI_MASK_FIELD_NUMBER: _ClassVar[int]
    frame: int
    format: str
    width: int
    height: int
    data: bytes
    seq: int
    request_id: int
    render_ms: float
    roi_mask: RoiMask
    def __init__(self, frame: _Optional[int] = ..., format: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., data: _Optional[bytes] = ..., seq: _Optional[int] = ..., request_id: _Optional[int] = ..., render_ms: _Optional[float] = ..., roi_mask: _Optional[_Union[RoiMask, _Mapping]] = ...) -> None: ...

class PlaybackRequest(_message.Message):
    __slots__ = ("session_id", "fps", "start_frame", "end_frame", "loop", "format", "quality", "scale", "join_token", "roi_mask_side")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_FIELD_NUMBER: _ClassVar[int]
    END_FRAME_FIELD_NUMBER: _ClassVar[int]
    LOOP_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ROI_MASK_SIDE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    fps: float
    start_frame: int
    end_frame: int
    loop: bool
    format: str
    quality: int
    scale: float
    join_token: str
    roi_mask_side: int
    def __init__(self, session_id: _Optional[str] = ..., fps: _Optional[float] = ..., start_frame: _Optional[int] = ..., end_frame: _Optional[int] = ..., loop: _Optional[bool] = ..., format: _Optional[str] = ..., quality: _Optional[int] = ..., scale: _Optional[float] = ..., join_token: _Optional[str] = ..., roi_mask_side: _Optional[int] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("session_id", "format", "start_frame", "end_frame", "crf", "join_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_FIELD_NUMBER: _ClassVar[int]
    END_FRAME_FIELD_NUMBER: _ClassVar[int]
    CRF_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    format: str
    start_frame: int
    end_frame: int
    crf: int
    join_token: str
    def __init__(self, session_id: _Optional[str] = ..., format: _Optional[str] = ..., start_frame: _Optional[int] = ..., end_frame: _Optional[int] = ..., crf: _Optional[int] = ..., join_token: _Optional[str] = ...) -> None: ...

class ExportEvent(_message.Message):
    __slots__ = ("fraction", "stage", "chunk", "done", "filename", "total_bytes")
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    stage: str
    chunk: bytes
    done: bool
    filename: str
    total_bytes: int
    def __init__(self, fraction: _Optional[float] = ..., stage: _Optional[str] = ..., chunk: _Optional[bytes] = ..., done: _Optional[bool] = ..., filename: _Optional[str] = ..., total_bytes: _Optional[int] = ...) -> None: ...
