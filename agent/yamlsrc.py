"""YAML with positions and bounds: every value remembers where it came from; no input can
make the loader slow, large or crash.

PyYAML's ``safe_load`` forgets where things were and silently keeps the last of two
duplicate keys. Users of a topology or an agent config need "file:line:col: key: what is
wrong", so we build plain Python values straight from the parser's events and keep a map from
the key path (``("resources", "aws_instance", "client-1", "private_ip")``) to the 1-based line
and column of that value. pydantic errors carry the same path in ``loc``, so they translate
directly.

Config files come from users, tickets and other machines, so loading is also the input
boundary: every problem with the bytes ends as a ``ConfigError`` with a position, never as a
traceback. Building from events (no node graph, no recursion) is what makes that cheap:

* **size** is bounded before parsing (``MAX_BYTES``, read with a limit; ``/dev/zero`` stops);
  **nesting depth** (``MAX_DEPTH``) and **node count** (``MAX_NODES``) are checked per event,
  and the parser is pulled one event at a time, so work stays linear in the input and stops at
  the first node over a bound;
* **aliases** (``*name``) are refused: expanding shared aliases is how a few hundred bytes
  become gigabytes (a "billion laughs" bomb), and a self-referencing alias is a cycle;
* **tags**: only the plain data tags (``!!str``, ``!!int``, ``!!float``, ``!!bool``,
  ``!!null``, ``!!seq``, ``!!map``) may be written explicitly; anything else (``!!binary``,
  ``!!set``, ``!foo``, ``!!python/...``) is refused at its position. Dates are not resolved
  implicitly (``2024-01-01`` stays a string: no field takes a date, and ``2024-13-45`` would
  not construct);
* **keys** are strings: ``80:`` or ``[a, b]:`` as a key is refused with its position (a
  number or a list as a key is always a mistake in these files);
* **numbers** are bounded: at most ``MAX_NUMBER_CHARS`` characters and 64 bits (a 5000-digit
  integer would otherwise reach Python's int/str conversion limit);
* **characters**: NUL and other control characters and invalid UTF-8 are reported at their
  line and column.

libyaml scans when it is installed (10x faster than the pure-Python scanner); the events and
therefore the values and positions are the same either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from agent.errors import ConfigError, PlprobeError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

#: largest accepted document (the shipped configs and topologies are 1-7 KB)
MAX_BYTES = 1 << 20
#: deepest nesting of mappings/sequences (the topology schema needs 6)
MAX_DEPTH = 64
#: most scalars + collections in one document (the reference topology has ~300)
MAX_NODES = 100_000
#: longest int/float literal; 64-bit values need at most 20 digits plus sign and underscores
MAX_NUMBER_CHARS = 64
#: explicit tags that may be written: the plain data types (anything else is refused)
_TAG = "tag:yaml.org,2002:"
ALLOWED_TAGS = frozenset(_TAG + t for t in ("str", "int", "float", "bool", "null", "seq", "map"))

#: what the YAML reader refuses (PyYAML's own set), found up front to report line:column
_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


class _Resolver(yaml.resolver.BaseResolver):
    """YAML 1.1 implicit types minus timestamps, ``=`` and ``!``/``&``/``*`` (module doc)."""


_IMPLICIT = frozenset(_TAG + t for t in ("bool", "int", "float", "null", "merge"))
_Resolver.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in entries if tag in _IMPLICIT]
    for first, entries in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
}
_RESOLVER = _Resolver()
#: the event source: libyaml's scanner/parser when installed, else PyYAML's (same events)
_LOADER: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


@dataclass
class Located:
    """A document's plain value plus the position of every node in it."""

    value: Any
    path: str
    marks: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def where(self, loc: Sequence[str | int]) -> tuple[int | None, int | None]:
        """Line/column of the deepest known prefix of ``loc`` (1-based)."""
        key = tuple(loc)
        while key:
            if key in self.marks:
                return self.marks[key]
            key = key[:-1]
        return self.marks.get((), (None, None))

    def error(self, loc: Sequence[str | int], message: str) -> ConfigError:
        line, col = self.where(loc)
        return ConfigError(message, path=self.path, line=line, col=col, key=dotted(loc) or None)


def dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class _Refused(Exception):
    """A node the loader will not build; ``load_yaml`` adds the file name."""

    def __init__(self, message: str, mark: Any, loc: Loc = ()) -> None:
        super().__init__(message)
        self.message = message
        self.line = mark.line + 1 if mark is not None else None
        self.col = mark.column + 1 if mark is not None else None
        self.loc = loc


def _events(text: str) -> Iterator[yaml.Event]:
    """The parser's events, pulled one at a time (libyaml when available)."""
    loader = _LOADER(text)
    try:
        while loader.check_event():
            yield loader.get_event()
    finally:
        loader.dispose()


def _check_tag(event: Any, loc: Loc) -> None:
    tag = event.tag
    if tag is not None and tag != "!" and tag not in ALLOWED_TAGS:
        raise _Refused(
            f"YAML tag {tag.replace(_TAG, '!!')!r} is not supported "
            "(only plain strings, numbers, booleans, null, lists and mappings)",
            event.start_mark,
            loc,
        )


def _scalar(event: yaml.ScalarEvent, loc: Loc) -> tuple[str, Any]:
    """(resolved tag, value) of one scalar, refusing what cannot be built or is unbounded."""
    _check_tag(event, loc)
    tag = event.tag
    if tag is None or tag == "!":
        tag = _RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit)
    text = event.value
    name = tag.removeprefix(_TAG)
    if name == "str" or name == "merge":
        return tag, text
    if name in ("int", "float") and len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"number is too long ({len(text)} characters)", event.start_mark, loc)
    node = yaml.ScalarNode(tag, text)  # errors carry the event's mark, not the node's
    try:
        if name == "bool":
            value: Any = _CONSTRUCTOR.bool_values[text.lower()]
        elif name == "int":
            value = _CONSTRUCTOR.construct_yaml_int(node)
        elif name == "float":
            value = _CONSTRUCTOR.construct_yaml_float(node)
        else:  # null
            value = None
    except (ValueError, KeyError, ArithmeticError):
        raise _Refused(f"{text!r} is not a valid !!{name}", event.start_mark, loc) from None
    if name == "int" and value.bit_length() > 64:
        raise _Refused("integer out of range (more than 64 bits)", event.start_mark, loc)
    return tag, value


@dataclass
class _Frame:
    """An open mapping or sequence while its events arrive."""

    value: dict[str, Any] | list[Any]
    loc: Loc
    key: str | None = None


def _build(events: Iterator[yaml.Event], marks: dict[Loc, tuple[int, int]]) -> Any:
    """Plain values from events, iteratively (no recursion, so depth is only a policy)."""
    stack: list[_Frame] = []
    nodes = 0
    documents = 0
    result: Any = None
    for event in events:
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise _Refused(
                    "one YAML document per file (found a second '---')", event.start_mark
                )
            continue
        if not isinstance(event, yaml.NodeEvent | yaml.CollectionEndEvent):
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            done = stack.pop()
            value: Any = done.value
            loc = done.loc
        else:
            top = stack[-1] if stack else None
            is_key = isinstance(top, _Frame) and isinstance(top.value, dict) and top.key is None
            if top is None:
                loc = ()
            elif isinstance(top.value, list):
                loc = (*top.loc, len(top.value))
            else:
                loc = (*top.loc, top.key) if top.key is not None else top.loc
            nodes += 1
            if nodes > MAX_NODES:
                raise _Refused(f"more than {MAX_NODES} values in one file", event.start_mark, loc)
            if isinstance(event, yaml.AliasEvent):
                raise _Refused(
                    f"YAML aliases (*{event.anchor}) are not supported; write the value out",
                    event.start_mark,
                    loc,
                )
            start = event.start_mark  # the parser marks every event; the stubs allow None
            mark = (start.line + 1, start.column + 1) if start is not None else (1, 1)
            if isinstance(event, yaml.CollectionStartEvent):
                _check_tag(event, loc)
                if is_key:
                    raise _Refused("mapping keys must be strings", event.start_mark, loc)
                if len(stack) >= MAX_DEPTH:
                    raise _Refused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark, loc)
                new: dict[str, Any] | list[Any] = (
                    {} if isinstance(event, yaml.MappingStartEvent) else []
                )
                stack.append(_Frame(new, loc))
                if not is_key and not (top and isinstance(top.value, dict)):
                    marks[loc] = mark
                continue
            assert isinstance(event, yaml.ScalarEvent)
            tag, value = _scalar(event, loc)
            if is_key:
                assert top is not None and isinstance(top.value, dict)
                if tag == _TAG + "merge":
                    raise _Refused(
                        "YAML merge keys (<<) are not supported; write the keys out",
                        event.start_mark,
                        loc,
                    )
                if tag != _TAG + "str":
                    raise _Refused(
                        f"mapping keys must be strings (quote it: '{event.value}':)",
                        event.start_mark,
                        loc,
                    )
                if value in top.value:
                    raise _Refused(
                        f"duplicate key {value!r} (YAML would silently keep only the last one)",
                        event.start_mark,
                        (*loc, value),
                    )
                top.key = value
                marks[(*loc, value)] = mark
                continue
            if top is None or isinstance(top.value, list):
                marks[loc] = mark
        # a finished value: attach it to its parent (or it is the document)
        if not stack:
            result = value
            continue
        parent = stack[-1]
        if isinstance(parent.value, list):
            parent.value.append(value)
        else:
            assert parent.key is not None
            parent.value[parent.key] = value
            parent.key = None
    return result


def _position(data: str | bytes, offset: int) -> tuple[int, int]:
    """1-based line and column of ``offset`` in ``data``."""
    newline = "\n" if isinstance(data, str) else b"\n"
    line = data.count(newline, 0, offset) + 1  # type: ignore[arg-type]
    return line, offset - (data.rfind(newline, 0, offset) + 1) + 1  # type: ignore[arg-type]


def _read(path: str) -> str:
    """The file's text, bounded before reading and decoded strictly (errors with position)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("file not found", path=path) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ConfigError(f"cannot read: {exc}", path=path) from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"file is larger than {MAX_BYTES} bytes", path=path, line=1, col=1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _position(data, exc.start)
        raise ConfigError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x})", path=path, line=line, col=col
        ) from None


def load_yaml(path: str | Path, text: str | None = None) -> Located:
    """Read one YAML document with positions; any problem with the input becomes a ConfigError.

    This is the parse boundary: whatever the bytes, the result is a ``Located`` or a
    ``ConfigError`` naming file:line:col (see the module docstring for the bounds).
    """
    path = str(path)
    if text is None:
        text = _read(path)
    elif len(text) > MAX_BYTES:
        raise ConfigError(f"document is larger than {MAX_BYTES} bytes", path=path, line=1, col=1)
    bad = _NON_PRINTABLE.search(text)
    if bad:
        line, col = _position(text, bad.start())
        char = ord(bad.group())
        what = "a NUL byte" if char == 0 else f"control character U+{char:04X}"
        raise ConfigError(f"{what} is not allowed in YAML", path=path, line=line, col=col)
    marks: dict[Loc, tuple[int, int]] = {}
    try:
        value = _build(_events(text), marks)
    except _Refused as exc:
        raise ConfigError(
            exc.message, path=path, line=exc.line, col=exc.col, key=dotted(exc.loc) or None
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(
            f"invalid YAML: {exc.problem or exc.context}",
            path=path,
            line=mark.line + 1 if mark else 1,
            col=mark.column + 1 if mark else 1,
        ) from None
    except yaml.YAMLError as exc:  # reader errors: the characters were checked above
        raise ConfigError(f"invalid YAML: {exc}", path=path, line=1, col=1) from None
    if value is None and not marks:
        return Located({}, path, {(): (1, 1)})
    return Located(value, path, marks)


def validate(model: type[M], doc: Located, loc: Loc = ()) -> M:
    """Validate ``doc.value`` (or the part at ``loc``) and map the first error to its line.

    The validation boundary: pydantic turns a validator's ValueError/AssertionError into a
    ValidationError with the key's path; anything else a validator raises (TypeError,
    OverflowError, RecursionError, ...) goes through ``checking``.
    """
    value = doc.value
    for part in loc:
        value = value[part]
    with checking(doc, loc):
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            full = (*loc, *[p for p in err["loc"] if not isinstance(p, str) or p])
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key (check the spelling; see the configuration reference)"
            elif err["type"] == "missing":
                message = "required key is missing"
            extra = len(exc.errors()) - 1
            if extra:
                message += f" (and {extra} more error{'s' if extra > 1 else ''})"
            raise doc.error(full, message) from None


@contextmanager
def checking(doc: Located, loc: Loc = ()) -> Iterator[None]:
    """A foreign exception while checking ``doc`` becomes a ConfigError at ``loc``.

    Validators and checks are written for the values they expect; a value of a type nobody
    thought of must still end as "file:line:col: key: message" (exit 2), not a traceback. The
    project's own errors pass through; the original is chained for ``plprobe --debug``.
    """
    try:
        yield
    except PlprobeError:
        raise
    except Exception as exc:
        what = "value" if loc else "file"
        raise doc.error(
            loc,
            f"cannot check this {what} ({type(exc).__name__}: {exc}; a plprobe bug: "
            "plprobe --debug shows where)",
        ) from exc
