"""Structured logging for the daemon: text or JSON lines (``log_format``), and verdict changes.

Why a change log and not a probe log: at 1,000 paths and a 30 s interval a line per probe is
~3,000 lines a minute of "still fine". What an operator greps for is *when a path changed* and
to what: ``VerdictLog`` remembers each path's (status, stage, blocked_at) and writes one line
only when that changes (and once for each path's first verdict).

Logs cannot be used against the disk: every line is bounded (``MESSAGE_MAX`` for the message,
``TRACEBACK_MAX`` for a traceback), client-supplied bytes are ``clip``-ped where they are logged
(and echoed in error bodies), and ``RepeatFilter`` lets a burst of the same warning through
then counts the rest, writing one summary per window: a flood of accept() errors or of
malformed requests costs a few lines a minute, not 640 MB in 2.5 minutes.

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

__all__ = [
    "CLIP_DEFAULT",
    "MESSAGE_MAX",
    "JsonFormatter",
    "RepeatFilter",
    "TextFormatter",
    "VerdictLog",
    "clip",
    "setup_logging",
]

#: the logger verdict changes are written to
VERDICT_LOGGER = "plprobe.verdict"
_HANDLER_MARK = "_plprobe_handler"
#: longest message and traceback a line keeps; the rest is cut and counted
MESSAGE_MAX = 4096
TRACEBACK_MAX = 16384


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[+{len(text) - limit} chars]"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _bounded(record.getMessage(), MESSAGE_MAX),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                body.setdefault(str(k), v)
        if record.exc_info:
            body["exc"] = _bounded(self.formatException(record.exc_info), TRACEBACK_MAX)
        return json.dumps(body, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` — readable in journald and a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatException(self, ei: Any) -> str:
        return _bounded(super().formatException(ei), TRACEBACK_MAX)

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if len(message) > MESSAGE_MAX:  # bounded before formatting: the record is shared
            record = logging.makeLogRecord({**record.__dict__, "args": None})
            record.msg = _bounded(message, MESSAGE_MAX)
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
        total = len(value)
        text = bytes(value[: limit * 4]).decode("utf-8", "backslashreplace")
    else:
        total = len(value)
        text = value[: limit * 4]
    complete = total <= limit * 4  # nothing was cut before escaping
    safe = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )
    if len(safe) <= limit and complete:
        return safe
    return f"{safe[:limit]}...[+{max(total - limit, 1)} chars]"


def _text(value: object) -> str:
    s = str(value)
    return json.dumps(s) if (" " in s or not s or '"' in s) else s


class RepeatFilter(logging.Filter):
    """Rate-limits repeated warnings and errors: ``burst`` per kind per ``window_s``, then a count.

    A *kind* is the logger, level and message template (not its arguments: a flood from many
    addresses is still one kind). Past the burst, records are dropped and counted; the first
    record of the kind in a later window carries ``[N similar suppressed in the last Ws]``, and
    kinds that went quiet get one summary line of their own at the next sweep (any record
    passing the filter, at most every ``window_s``). INFO and below, and verdict changes, pass
    untouched: they are already one line per change. Kinds are bounded (``max_kinds``, the
    least recently seen forgotten), so the filter's own memory cannot grow with the flood.
    """

    def __init__(
        self,
        burst: int = 10,
        window_s: float = 60.0,
        *,
        max_kinds: int = 1024,
        clock: Any = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self.max_kinds = max_kinds
        self.clock = clock
        self.suppressed_total = 0
        #: kind -> [window start, records this window, suppressed this window]
        self._kinds: dict[tuple[str, int, str], list[float]] = {}
        self._next_sweep = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.name == VERDICT_LOGGER:
            return True
        if getattr(record, "_plprobe_summary", False):
            return True
        now = self.clock()
        kind = (record.name, record.levelno, str(record.msg)[:200])
        state = self._kinds.pop(kind, None)  # re-inserted last: dict order is recency
        if state is None or now - state[0] >= self.window_s:
            if state is not None and state[2]:
                record.msg = f"{record.msg} [{int(state[2])} similar suppressed in the last "
                record.msg += f"{self.window_s:g}s]"
            state = [now, 0, 0]
        self._kinds[kind] = state
        while len(self._kinds) > self.max_kinds:
            del self._kinds[next(iter(self._kinds))]
        state[1] += 1
        if state[1] > self.burst:
            state[2] += 1
            self.suppressed_total += 1
            return False
        if now >= self._next_sweep:
            self._next_sweep = now + self.window_s
            self._sweep(now, skip=kind)
        return True

    def _sweep(self, now: float, skip: tuple[str, int, str]) -> None:
        """One summary line for each kind whose window ended with records suppressed."""
        for kind, state in list(self._kinds.items()):
            if kind == skip or now - state[0] < self.window_s or not state[2]:
                continue
            name, level, template = kind
            summary = logging.getLogger(name).makeRecord(
                name,
                level,
                "(summary)",
                0,
                "%d similar messages suppressed in the last %gs: %s",
                (int(state[2]), self.window_s, template),
                None,
                extra={"_plprobe_summary": True},
            )
            state[2] = 0
            logging.getLogger(name).handle(summary)


def setup_logging(
    log_format: str = "text", *, level: int = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Route every log record through one handler with the chosen format (idempotent).

    Replaces the handler a previous call installed (a reload may switch the format) and any
    ``basicConfig`` handler of the CLI, so each record is written exactly once.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RepeatFilter())
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
