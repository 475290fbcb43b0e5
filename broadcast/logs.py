"""Logs: one JSON object per line for machines, readable lines in a terminal (structlog).

Every module logs through the standard library (`logging.getLogger(__name__)`), uvicorn
too; structlog's ProcessorFormatter renders each record. A record carries the time (UTC,
ISO 8601), level, logger, message, this node's id, and whatever the caller passed in
`extra`: sessions log their `stream`, `session` and `role`
(`broadcast.media.session.Session.log`). Nothing per packet is ever logged.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog
from structlog.types import EventDict, Processor

__all__ = ["configure"]

Format = Literal["auto", "json", "console"]


def configure(level: str, fmt: Format, node_id: str) -> None:
    """Route every log record of the process through structlog; `auto`: JSON unless
    stderr is a terminal."""

    def add_node(logger: Any, name: str, event: EventDict) -> EventDict:
        event.setdefault("node", node_id)
        event.pop("color_message", None)  # uvicorn's ANSI-coloured copy of the message
        return event

    shared: list[Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        add_node,
    ]
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.processors.format_exc_info],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # httpx: a line per relay request; aioice: a line per ICE check state change.
    quiet = max(logging.WARNING, root.level)
    for name in ("httpx", "aioice", "aiortc"):
        logging.getLogger(name).setLevel(quiet if root.level > logging.DEBUG else root.level)
