"""agent/logs.py: lines are bounded, client bytes clipped, repeated warnings summarised."""

from __future__ import annotations

import io
import json
import logging

from agent.logs import MESSAGE_MAX, JsonFormatter, RepeatFilter, TextFormatter, clip, setup_logging


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(
    msg: str, *args: object, level: int = logging.WARNING, name: str = "x"
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args or None, None)


def test_clip_keeps_short_printable_text_as_is() -> None:
    assert clip("GET /metrics HTTP/1.1") == "GET /metrics HTTP/1.1"


def test_clip_cuts_long_input_and_says_how_much_was_cut() -> None:
    out = clip(b"A" * 8_000_000, 100)
    assert out.startswith("A" * 100) and out.endswith("...[+7999900 chars]")
    assert len(out) < 130


def test_clip_escapes_line_breaks_so_a_client_cannot_forge_a_log_line() -> None:
    out = clip(b"GET / HTTP/1.1\r\nX: 1\n2026-01-01 ERROR forged")
    assert "\n" not in out and "\r" not in out and "\\r\\n" in out


def test_clip_decodes_invalid_utf8_without_failing() -> None:
    assert clip(b"\xff\xfeok") == "\\xff\\xfeok"


def test_a_text_line_never_exceeds_the_message_bound() -> None:
    line = TextFormatter().format(record("bad request: %s", "x" * 1_000_000))
    assert len(line) < MESSAGE_MAX + 200


def test_a_json_line_never_exceeds_the_message_bound() -> None:
    line = JsonFormatter().format(record("bad request: %s", "x" * 1_000_000))
    assert len(json.loads(line)["msg"]) < MESSAGE_MAX + 50


def test_a_burst_of_the_same_warning_passes_then_the_rest_is_dropped_and_counted() -> None:
    f = RepeatFilter(burst=3, window_s=60, clock=Clock())
    passed = [f.filter(record("accept failed from %s", f"10.0.0.{i}")) for i in range(1000)]
    assert passed.count(True) == 3 and f.suppressed_total == 997


def test_the_first_line_of_a_later_window_says_how_many_were_suppressed() -> None:
    clock = Clock()
    f = RepeatFilter(burst=1, window_s=10, clock=clock)
    for _ in range(5):
        f.filter(record("accept failed"))
    clock.now = 11
    later = record("accept failed")
    assert f.filter(later)
    assert later.getMessage() == "accept failed [4 similar suppressed in the last 10s]"


def test_a_kind_that_went_quiet_gets_one_summary_line_at_the_next_sweep() -> None:
    clock = Clock()
    stream = io.StringIO()
    handler = setup_logging(stream=stream)
    f = next(x for x in handler.filters if isinstance(x, RepeatFilter))
    f.clock = clock
    noisy = logging.getLogger("test.noisy")
    for _ in range(50):
        noisy.error("socket.accept() out of system resource")
    clock.now = 61
    logging.getLogger("test.other").warning("something else")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 + 1 + 1
    assert "40 similar messages suppressed in the last 60s" in lines[-2]


def test_verdict_changes_and_info_lines_are_never_rate_limited() -> None:
    f = RepeatFilter(burst=1, window_s=60, clock=Clock())
    assert all(
        f.filter(record("path %s: %s", "p", "fail", name="plprobe.verdict")) for _ in range(50)
    )
    assert all(f.filter(record("ready", level=logging.INFO)) for _ in range(50))


def test_the_filter_remembers_a_bounded_number_of_kinds() -> None:
    f = RepeatFilter(burst=1, window_s=60, max_kinds=100, clock=Clock())
    for i in range(10_000):
        f.filter(record(f"distinct message {i}"))
    assert len(f._kinds) == 100
