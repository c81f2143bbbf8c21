from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
OBJECT_KINDS_FIELD_NUMBER: _ClassVar[int]
object_kinds: _descriptor.FieldDescriptor
CONTROL_KINDS_FIELD_NUMBER: _ClassVar[int]
control_kinds: _descriptor.FieldDescriptor
KINDS_FIELD_NUMBER: _ClassVar[int]
kinds: _descriptor.FieldDescriptor

class Vec2(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class EditOp(_message.Message):
    __slots__ = ("id", "type", "space", "frame", "points", "width", "color", "hardness", "mode", "image", "rect", "position", "scale", "rotation", "opacity", "region", "exposure", "contrast", "saturation", "hue", "temperature", "size", "follow_scale", "follow_rotation", "target", "visible", "set", "z", "roi_region")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    HARDNESS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RECT_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    OPACITY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    EXPOSURE_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    SATURATION_FIELD_NUMBER: _ClassVar[int]
    HUE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_SCALE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_ROTATION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    VISIBLE_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    ROI_REGION_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    space: str
    frame: int
    points: _containers.RepeatedCompositeFieldContainer[Vec2]
    width: float
    color: _containers.RepeatedScalarFieldContainer[float]
    hardness: float
    mode: str
    image: bytes
    rect: _containers.RepeatedScalarFieldContainer[float]
    position: Vec2
    scale: float
    rotation: float
    opacity: float
    region: str
    exposure: float
    contrast: float
    saturation: float
    hue: float
    temperature: float
    size: _containers.RepeatedScalarFieldContainer[float]
    follow_scale: bool
    follow_rotation: bool
    target: str
    visible: bool
    set: EditOp
    z: float
    roi_region: int
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., space: _Optional[str] = ..., frame: _Optional[int] = ..., points: _Optional[_Iterable[_Union[Vec2, _Mapping]]] = ..., width: _Optional[float] = ..., color: _Optional[_Iterable[float]] = ..., hardness: _Optional[float] = ..., mode: _Optional[str] = ..., image: _Optional[bytes] = ..., rect: _Optional[_Iterable[float]] = ..., position: _Optional[_Union[Vec2, _Mapping]] = ..., scale: _Optional[float] = ..., rotation: _Optional[float] = ..., opacity: _Optional[float] = ..., region: _Optional[str] = ..., exposure: _Optional[float] = ..., contrast: _Optional[float] = ..., saturation: _Optional[float] = ..., hue: _Optional[float] = ..., temperature: _Optional[float] = ..., size: _Optional[_Iterable[float]] = ..., follow_scale: _Optional[bool] = ..., follow_rotation: _Optional[bool] = ..., target: _Optional[str] = ..., visible: _Optional[bool] = ..., set: _Optional[_Union[EditOp, _Mapping]] = ..., z: _Optional[float] = ..., roi_region: _Optional[int] = ...) -> None: ...

class EditDocument(_message.Message):
    __slots__ = ("version", "ops")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    version: int
    ops: _containers.RepeatedCompositeFieldContainer[EditOp]
    def __init__(self, version: _Optional[int] = ..., ops: _Optional[_Iterable[_Union[EditOp, _Mapping]]] = ...) -> None: ...
