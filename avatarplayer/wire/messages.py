"""The motion-frame protobuf schema (``docs/wire-format.md`` §1), built at import time.

No ``protoc`` and no generated ``_pb2`` module: the schema is written out as a
``FileDescriptorProto`` and turned into message classes by ``google.protobuf``'s message factory,
so this module is pure Python and loads the same under CPython and Pyodide.

Package ``driveningress.v2``::

    enum MessageType { MESSAGE_UNSPECIFIED = 0; MESSAGE_SERVER_RESPONSE_ANIMATION = 5; }
    message Message { MessageType type = 1; oneof data { ServerResponseAnimation server_response_animation = 6; } }
    message ServerResponseAnimation { string connection_id = 1; string req_id = 2; bool end = 3;
                                      FlameAnimation animation = 4; string avatar_id = 5; }
    message FlameAnimation { repeated Flame keyframes = 1; }
    message Flame { repeated float translation = 1; rotation = 2; neck_pose = 3; jaw_pose = 4;
                    eye_pose = 5; eye_lid = 6; expression = 7; }   // all packed

The public schema has more ``MessageType`` values and ``data`` members; only the animation ones
are declared here. Unknown enum values and fields survive a parse/serialize round trip (proto3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

__all__ = [
    "PACKAGE",
    "FLAME_FIELDS",
    "MESSAGE_SERVER_RESPONSE_ANIMATION",
    "Message",
    "ServerResponseAnimation",
    "FlameAnimation",
    "Flame",
    "MessageType",
    "build_message",
    "parse_message",
]

PACKAGE = "driveningress.v2"

FLAME_FIELDS: dict[str, int] = {
    "translation": 3,
    "rotation": 3,
    "neck_pose": 3,
    "jaw_pose": 3,
    "eye_pose": 6,
    "eye_lid": 2,
    "expression": 100,
}
"""FLAME parameter name → number of floats, in field-number order (1..7)."""

MESSAGE_UNSPECIFIED = 0
MESSAGE_SERVER_RESPONSE_ANIMATION = 5

_F = descriptor_pb2.FieldDescriptorProto


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="driveningress/v2/avatar_motion.proto", package=PACKAGE, syntax="proto3"
    )
    enum = fd.enum_type.add(name="MessageType")
    enum.value.add(name="MESSAGE_UNSPECIFIED", number=MESSAGE_UNSPECIFIED)
    enum.value.add(name="MESSAGE_SERVER_RESPONSE_ANIMATION", number=MESSAGE_SERVER_RESPONSE_ANIMATION)

    def field(msg: descriptor_pb2.DescriptorProto, name: str, number: int, ftype: int,
              label: int = _F.LABEL_OPTIONAL, type_name: str = "", oneof: int | None = None) -> None:
        f = msg.field.add(name=name, number=number, type=ftype, label=label, json_name=_camel(name))
        if type_name:
            f.type_name = f".{PACKAGE}.{type_name}"
        if oneof is not None:
            f.oneof_index = oneof

    flame = fd.message_type.add(name="Flame")
    for number, name in enumerate(FLAME_FIELDS, start=1):
        # proto3 packs repeated scalars by default; a real keyframe (120 floats) is 495 bytes
        field(flame, name, number, _F.TYPE_FLOAT, _F.LABEL_REPEATED)

    animation = fd.message_type.add(name="FlameAnimation")
    field(animation, "keyframes", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "Flame")

    response = fd.message_type.add(name="ServerResponseAnimation")
    field(response, "connection_id", 1, _F.TYPE_STRING)
    field(response, "req_id", 2, _F.TYPE_STRING)
    field(response, "end", 3, _F.TYPE_BOOL)
    field(response, "animation", 4, _F.TYPE_MESSAGE, type_name="FlameAnimation")
    field(response, "avatar_id", 5, _F.TYPE_STRING)

    message = fd.message_type.add(name="Message")
    message.oneof_decl.add(name="data")
    field(message, "type", 1, _F.TYPE_ENUM, type_name="MessageType")
    field(message, "server_response_animation", 6, _F.TYPE_MESSAGE,
          type_name="ServerResponseAnimation", oneof=0)
    return fd


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# A private pool: a generated driveningress module elsewhere in the process cannot clash with us.
_POOL = descriptor_pool.DescriptorPool()
_FILE_PROTO = _file_descriptor()
_POOL.AddSerializedFile(_FILE_PROTO.SerializeToString())
_FILE_DESC = _POOL.FindFileByName(_FILE_PROTO.name)

# Typed as Any: their fields are made at run time, so no static checker knows them.
Message: Any = message_factory.GetMessageClass(_FILE_DESC.message_types_by_name["Message"])
ServerResponseAnimation: Any = message_factory.GetMessageClass(
    _FILE_DESC.message_types_by_name["ServerResponseAnimation"])
FlameAnimation: Any = message_factory.GetMessageClass(_FILE_DESC.message_types_by_name["FlameAnimation"])
Flame: Any = message_factory.GetMessageClass(_FILE_DESC.message_types_by_name["Flame"])
MessageType = _FILE_DESC.enum_types_by_name["MessageType"]
"""The ``EnumDescriptor`` of ``MessageType`` (``MessageType.values_by_name[...]`` for numbers)."""


def build_message(
    flame: Mapping[str, Sequence[float]],
    *,
    req_id: str = "",
    end: bool = False,
    avatar_id: str = "",
    connection_id: str = "",
) -> bytes:
    """Serialize a ``Message`` of type 5 holding exactly one FLAME keyframe.

    ``flame`` maps FLAME parameter names (:data:`FLAME_FIELDS`) to their floats; a missing name is
    left empty. Raises ``ValueError`` for an unknown name or a wrong number of floats.
    """
    keyframe = Flame()
    for name, values in flame.items():
        size = FLAME_FIELDS.get(name)
        if size is None:
            raise ValueError(f"unknown FLAME parameter {name!r}; expected one of {', '.join(FLAME_FIELDS)}")
        values = list(values)
        if len(values) != size:
            raise ValueError(f"FLAME parameter {name!r} takes {size} floats, got {len(values)}")
        getattr(keyframe, name).extend(float(v) for v in values)
    msg = Message(type=MESSAGE_SERVER_RESPONSE_ANIMATION)
    response = msg.server_response_animation
    response.connection_id = connection_id
    response.req_id = req_id
    response.end = end
    response.avatar_id = avatar_id
    response.animation.keyframes.append(keyframe)
    data: bytes = msg.SerializeToString()
    return data


def parse_message(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode a serialized ``Message`` into plain Python values.

    Returns ``{"type": int, "connection_id": str, "req_id": str, "end": bool, "avatar_id": str,
    "keyframes": [{name: [float, ...], ...}, ...]}`` (the response fields are empty/False when the
    message carries no animation). Raises ``ValueError`` for bytes that are not a ``Message``.
    """
    msg = Message()
    try:
        msg.ParseFromString(bytes(data))
    except (DecodeError, ValueError, RuntimeError) as exc:  # decoding is total: ValueError only
        raise ValueError(f"not a driveningress.v2.Message: {exc}") from None
    response = msg.server_response_animation
    return {
        "type": int(msg.type),
        "connection_id": response.connection_id,
        "req_id": response.req_id,
        "end": bool(response.end),
        "avatar_id": response.avatar_id,
        "keyframes": [
            {name: list(getattr(kf, name)) for name in FLAME_FIELDS}
            for kf in response.animation.keyframes
        ],
    }
