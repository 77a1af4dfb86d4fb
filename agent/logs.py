"""Structured logging for the daemon: text or JSON lines (``log_format``), and verdict changes.

Why a change log and not a probe log: at 1,000 paths and a 30 s interval a line per probe is
~3,000 lines a minute of "still fine". What an operator greps for is *when a path changed* and
to what: ``VerdictLog`` remembers each path's (status, stage, blocked_at) and writes one line
only when that changes (and once for each path's first verdict).

JSON lines carry the record's fields at the top level (``extra={"fields": {...}}``), so log
pipelines (CloudWatch, Loki) can filter on ``path`` or ``blocked_at`` without parsing text.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from agent.results import Verdict

__all__ = ["CLIP_DEFAULT", "JsonFormatter", "TextFormatter", "VerdictLog", "clip", "setup_logging"]

#: the logger verdict changes are written to
VERDICT_LOGGER = "plprobe.verdict"
_HANDLER_MARK = "_plprobe_handler"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                body.setdefault(str(k), v)
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` — readable in journald and a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items() if v is not None)
        return text


#: how much of a client-supplied or otherwise unbounded string a log line or error body keeps
CLIP_DEFAULT = 256


def clip(value: str | bytes | bytearray | memoryview, limit: int = CLIP_DEFAULT) -> str:
    """``value`` made safe to log or echo: at most ``limit`` characters, one line, printable.

    Why: anything a client sent (a request line, a header, a token) or a file holds may end up
    in a message; unclipped, one 8 MiB request becomes an 8 MiB log line and error body. Bytes
    are decoded leniently, control characters (CR/LF included: no forged log lines) escaped,
    and what is cut is counted (``...[+N chars]``), so the line still says how big it was.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value[: limit * 4])
        total = len(value)
        text = raw.decode("utf-8", "backslashreplace")
    else:
        total = len(value)
        text = value[: limit * 4]
    safe = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )
    if len(safe) <= limit and len(text) == total:
        return safe
    return f"{safe[:limit]}...[+{max(total - limit, 1)} chars]"


def _text(value: object) -> str:
    s = str(value)
    return json.dumps(s) if (" " in s or not s or '"' in s) else s


def setup_logging(
    log_format: str = "text", *, level: int = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Route every log record through one handler with the chosen format (idempotent).

    Replaces the handler a previous call installed (a reload may switch the format) and any
    ``basicConfig`` handler of the CLI, so each record is written exactly once.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def _key(v: Verdict) -> tuple[str, str, str | None]:
    return (v.status, v.stage, v.blocked_at)


class VerdictLog:
    """Writes one line per verdict change; remembers the last verdict of each path."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger(VERDICT_LOGGER)
        self._last: dict[str, tuple[str, str, str | None]] = {}

    def update(self, verdicts: Iterable[Verdict]) -> list[Verdict]:
        """Log the verdicts that differ from the path's previous one; returns them."""
        changed = []
        for v in verdicts:
            before = self._last.get(v.path)
            now = _key(v)
            if before == now:
                continue
            self._last[v.path] = now
            changed.append(v)
            fields: dict[str, Any] = {
                "path": v.path,
                "status": v.status,
                "previous": before[0] if before else None,
                "stage": v.stage,
                "blocked_at": v.blocked_at,
            }
            if v.status != "pass":
                fields["fix"] = v.fix or None
                fields["explanation"] = v.explanation or None
            level = logging.INFO if v.status == "pass" else logging.WARNING
            what = v.status if v.blocked_at is None else f"{v.status} at {v.blocked_at}"
            self.log.log(level, "path %s: %s", v.path, what, extra={"fields": fields})
        return changed

    def forget(self, path: str) -> None:
        self._last.pop(path, None)
