from vatlas_wire.v1 import common_pb2 as _common_pb2
from vatlas_wire.v1 import edits_pb2 as _edits_pb2
from vatlas_wire.v1 import render_pb2 as _render_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BundleInfo(_message.Message):
    __slots__ = ("name", "loaded", "frames", "width", "height", "fps", "ref_frame", "atlas_size", "metrics_json", "file_bytes", "roi")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    REF_FRAME_FIELD_NUMBER: _ClassVar[int]
    ATLAS_SIZE_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    FILE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROI_FIELD_NUMBER: _ClassVar[int]
    name: str
    loaded: bool
    frames: int
    width: int
    height: int
    fps: float
    ref_frame: int
    atlas_size: int
    metrics_json: str
    file_bytes: int
    roi: Roi
    def __init__(self, name: _Optional[str] = ..., loaded: _Optional[bool] = ..., frames: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[float] = ..., ref_frame: _Optional[int] = ..., atlas_size: _Optional[int] = ..., metrics_json: _Optional[str] = ..., file_bytes: _Optional[int] = ..., roi: _Optional[_Union[Roi, _Mapping]] = ...) -> None: ...

class RoiPolygon(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[_edits_pb2.Vec2]
    def __init__(self, points: _Optional[_Iterable[_Union[_edits_pb2.Vec2, _Mapping]]] = ...) -> None: ...

class Roi(_message.Message):
    __slots__ = ("ref_frame", "polygons", "visible")
    REF_FRAME_FIELD_NUMBER: _ClassVar[int]
    POLYGONS_FIELD_NUMBER: _ClassVar[int]
    VISIBLE_FIELD_NUMBER: _ClassVar[int]
    ref_frame: int
    polygons: _containers.RepeatedCompositeFieldContainer[RoiPolygon]
    visible: _containers.RepeatedCompositeFieldContainer[_render_pb2.Region]
    def __init__(self, ref_frame: _Optional[int] = ..., polygons: _Optional[_Iterable[_Union[RoiPolygon, _Mapping]]] = ..., visible: _Optional[_Iterable[_Union[_render_pb2.Region, _Mapping]]] = ...) -> None: ...

class ListBundlesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBundlesResponse(_message.Message):
    __slots__ = ("bundles",)
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[BundleInfo]
    def __init__(self, bundles: _Optional[_Iterable[_Union[BundleInfo, _Mapping]]] = ...) -> None: ...

class LoadBundleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetBundleInfoRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("filename", "data", "last", "total_bytes")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    filename: str
    data: bytes
    last: bool
    total_bytes: int
    def __init__(self, filename: _Optional[str] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class UploadResult(_message.Message):
    __slots__ = ("upload_id", "bytes")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    bytes: int
    def __init__(self, upload_id: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class StartFitRequest(_message.Message):
    __slots__ = ("upload_id", "name", "roi_json", "preset", "iterations", "width", "height", "detach")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROI_JSON_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    name: str
    roi_json: str
    preset: str
    iterations: int
    width: int
    height: int
    detach: bool
    def __init__(self, upload_id: _Optional[str] = ..., name: _Optional[str] = ..., roi_json: _Optional[str] = ..., preset: _Optional[str] = ..., iterations: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., detach: _Optional[bool] = ...) -> None: ...

class FitProgress(_message.Message):
    __slots__ = ("stage", "fraction", "iteration", "losses", "eta_seconds", "done", "bundle", "message", "fit_id", "stage_number", "stage_count", "readout", "elapsed_seconds", "preview", "preview_frame")
    class LossesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIT_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    READOUT_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FRAME_FIELD_NUMBER: _ClassVar[int]
    stage: str
    fraction: float
    iteration: int
    losses: _containers.ScalarMap[str, float]
    eta_seconds: float
    done: bool
    bundle: BundleInfo
    message: str
    fit_id: str
    stage_number: int
    stage_count: int
    readout: str
    elapsed_seconds: float
    preview: bytes
    preview_frame: int
    def __init__(self, stage: _Optional[str] = ..., fraction: _Optional[float] = ..., iteration: _Optional[int] = ..., losses: _Optional[_Mapping[str, float]] = ..., eta_seconds: _Optional[float] = ..., done: _Optional[bool] = ..., bundle: _Optional[_Union[BundleInfo, _Mapping]] = ..., message: _Optional[str] = ..., fit_id: _Optional[str] = ..., stage_number: _Optional[int] = ..., stage_count: _Optional[int] = ..., readout: _Optional[str] = ..., elapsed_seconds: _Optional[float] = ..., preview: _Optional[bytes] = ..., preview_frame: _Optional[int] = ...) -> None: ...

class UploadProgress(_message.Message):
    __slots__ = ("bytes",)
    BYTES_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    def __init__(self, bytes: _Optional[int] = ...) -> None: ...

class UploadFrameRequest(_message.Message):
    __slots__ = ("upload_id", "frame", "max_side")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    MAX_SIDE_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    frame: int
    max_side: int
    def __init__(self, upload_id: _Optional[str] = ..., frame: _Optional[int] = ..., max_side: _Optional[int] = ...) -> None: ...

class UploadFrame(_message.Message):
    __slots__ = ("upload_id", "frame", "frames", "width", "height", "fps", "jpeg", "image_width", "image_height")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    JPEG_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    frame: int
    frames: int
    width: int
    height: int
    fps: float
    jpeg: bytes
    image_width: int
    image_height: int
    def __init__(self, upload_id: _Optional[str] = ..., frame: _Optional[int] = ..., frames: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[float] = ..., jpeg: _Optional[bytes] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ...) -> None: ...

class FitInfo(_message.Message):
    __slots__ = ("fit_id", "name", "running", "progress", "error", "detached")
    FIT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DETACHED_FIELD_NUMBER: _ClassVar[int]
    fit_id: str
    name: str
    running: bool
    progress: FitProgress
    error: _common_pb2.Error
    detached: bool
    def __init__(self, fit_id: _Optional[str] = ..., name: _Optional[str] = ..., running: _Optional[bool] = ..., progress: _Optional[_Union[FitProgress, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., detached: _Optional[bool] = ...) -> None: ...

class ListFitsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListFitsResponse(_message.Message):
    __slots__ = ("fits",)
    FITS_FIELD_NUMBER: _ClassVar[int]
    fits: _containers.RepeatedCompositeFieldContainer[FitInfo]
    def __init__(self, fits: _Optional[_Iterable[_Union[FitInfo, _Mapping]]] = ...) -> None: ...

class AttachFitRequest(_message.Message):
    __slots__ = ("fit_id",)
    FIT_ID_FIELD_NUMBER: _ClassVar[int]
    fit_id: str
    def __init__(self, fit_id: _Optional[str] = ...) -> None: ...

class CancelFitRequest(_message.Message):
    __slots__ = ("fit_id",)
    FIT_ID_FIELD_NUMBER: _ClassVar[int]
    fit_id: str
    def __init__(self, fit_id: _Optional[str] = ...) -> None: ...
