"""The OpenAPI description of recording (broadcast/http/recording.py) and of the data
channel and recording state in the stream API (broadcast/http/ops.py)."""

from __future__ import annotations

from broadcast.http.openapi_kit import (
    COUNT,
    JSON,
    STREAM_PATTERN,
    closed_object,
    empty,
    errors,
    json_content,
    nullable,
    operation,
    param,
    ref,
)
from broadcast.media.datachannels import DROP_REASONS
from broadcast.media.recordings import FILE_NAME

__all__ = ["RECORDING_PATHS", "RECORDING_SCHEMAS", "STREAM_STATE"]

_STREAM = param("stream", pattern=STREAM_PATTERN)
_FILE = param("file", description="A file name from the listing.", pattern=FILE_NAME.pattern)
_BEARER: JSON = {"security": [{}, {"bearer": []}]}

_DATA_CHANNEL = closed_object(
    {
        "label": {"type": "string"},
        "protocol": {"type": "string"},
        "ordered": {"type": "boolean"},
        "max_retransmits": nullable("integer"),
        "max_packet_lifetime": nullable("integer"),
        "publisher": {"type": "boolean", "description": "The publisher's channel is open."},
        "viewers": {**COUNT, "description": "Viewers with this channel open."},
        "messages": COUNT,
        "bytes": COUNT,
    }
)
_DATA = closed_object(
    {
        "channels": {"type": "array", "items": ref("DataChannel")},
        "messages_in": COUNT,
        "messages_out": COUNT,
        "dropped": closed_object(dict.fromkeys(DROP_REASONS, COUNT)),
    }
)
_RECORDING = closed_object(
    {
        "enabled": {"type": "boolean", "description": "BROADCAST_RECORD_DIR is set."},
        "wanted": {"type": "boolean", "description": "Recorded whenever it is live."},
        "recording": {"type": "boolean"},
        "active": {"type": "boolean"},
        "started_at": {"type": "number"},
        "file": {**nullable("string"), "description": "The segment being written."},
        "segments": COUNT,
        "frames": {"type": "object", "additionalProperties": COUNT},
        "frames_dropped": COUNT,
        "bytes": COUNT,
        "errors": COUNT,
    },
    optional=(
        "active",
        "started_at",
        "file",
        "segments",
        "frames",
        "frames_dropped",
        "bytes",
        "errors",
    ),
)
_FILE_INFO = closed_object(
    {
        "name": {"type": "string", "pattern": FILE_NAME.pattern},
        "bytes": COUNT,
        "modified_at": {"type": "number"},
        "in_progress": {"type": "boolean"},
        "url": {"type": "string"},
    }
)

RECORDING_SCHEMAS: JSON = {
    "DataChannels": _DATA,
    "DataChannel": _DATA_CHANNEL,
    "RecordingState": _RECORDING,
    "RecordingFile": _FILE_INFO,
}
# In every stream this node describes.
STREAM_STATE: JSON = {
    "data": {"oneOf": [ref("DataChannels"), {"type": "null"}]},
    "recording": ref("RecordingState"),
}

_STATE = json_content("The stream's recording state.", ref("RecordingState"))
_FILE_TYPES = {
    t: {"schema": {"type": "string", "format": "binary"}}
    for t in ("video/webm", "video/x-matroska", "video/mp4")
}
RECORDING_PATHS: JSON = {
    "/api/streams/{stream}/recording": {
        "get": operation(
            "get_recording",
            "The stream's recording state",
            {"200": _STATE, **errors(307, 400, 401, 403, 503)},
            _STREAM,
            **_BEARER,
        ),
        "post": operation(
            "start_recording",
            "Record the live stream (publish credentials)",
            {"200": _STATE, **errors(307, 400, 401, 403, 409, 503)},
            _STREAM,
            **_BEARER,
        ),
        "delete": operation(
            "stop_recording",
            "Stop recording the stream, and do not restart (publish credentials)",
            {"200": _STATE, **errors(307, 400, 401, 403, 503)},
            _STREAM,
            **_BEARER,
        ),
    },
    "/api/streams/{stream}/recordings": {
        "get": operation(
            "list_recordings",
            "The stream's recorded files, oldest first",
            {
                "200": json_content(
                    "Files in BROADCAST_RECORD_DIR.",
                    {"type": "array", "items": ref("RecordingFile")},
                ),
                **errors(400, 401, 403),
            },
            _STREAM,
            **_BEARER,
        ),
    },
    "/api/streams/{stream}/recordings/{file}": {
        "get": operation(
            "get_recording_file",
            "Download a recorded file (Range requests honoured)",
            {
                "200": {"description": "The file.", "content": _FILE_TYPES},
                "206": {
                    "description": "The range asked for (RFC 9110 §14).",
                    "content": _FILE_TYPES,
                },
                **errors(400, 401, 403, 404),
            },
            _STREAM,
            _FILE,
            **_BEARER,
        ),
        "delete": operation(
            "delete_recording_file",
            "Delete a recorded file (publish credentials)",
            {"204": empty("Deleted."), **errors(400, 401, 403, 404, 409)},
            _STREAM,
            _FILE,
            **_BEARER,
        ),
    },
}
