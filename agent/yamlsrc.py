"""YAML with positions: every value remembers the line it came from.

PyYAML's ``safe_load`` forgets where things were and silently keeps the last of two
duplicate keys. Users of a topology or an agent config need "file:line: key: what is wrong",
so we compose the node graph ourselves, build plain Python values, and keep a map from the
key path (``("resources", "aws_instance", "client-1", "private_ip")``) to the 1-based line
and column of that value. pydantic errors carry the same path in ``loc``, so they translate
directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from agent.errors import ConfigError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


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


def _build(node: yaml.Node, loc: Loc, marks: dict[Loc, tuple[int, int]], path: str) -> Any:
    marks[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(
                    "YAML merge keys (<<) are not supported; write the keys out",
                    path=path,
                    line=key_node.start_mark.line + 1,
                    col=key_node.start_mark.column + 1,
                    key=dotted(loc) or None,
                )
            key = yaml.SafeLoader(stream="").construct_object(key_node)
            if not isinstance(key, str | int | bool | float):
                raise ConfigError(
                    "mapping keys must be plain scalars",
                    path=path,
                    line=key_node.start_mark.line + 1,
                    col=key_node.start_mark.column + 1,
                    key=dotted(loc) or None,
                )
            key = str(key) if not isinstance(key, int) or isinstance(key, bool) else key
            if key in out:
                raise ConfigError(
                    f"duplicate key {key!r} (YAML would silently keep only the last one)",
                    path=path,
                    line=key_node.start_mark.line + 1,
                    col=key_node.start_mark.column + 1,
                    key=dotted((*loc, key)),
                )
            out[key] = _build(value_node, (*loc, key), marks, path)
            marks[(*loc, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*loc, i), marks, path) for i, item in enumerate(node.value)]
    return yaml.SafeLoader(stream="").construct_object(node)


def load_yaml(path: str | Path, text: str | None = None) -> Located:
    """Read one YAML document with positions; any YAML problem becomes a ConfigError."""
    path = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("file not found", path=path) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read: {exc}", path=path) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(
            f"invalid YAML: {exc.problem}",
            path=path,
            line=mark.line + 1 if mark else None,
            col=mark.column + 1 if mark else None,
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=path) from exc
    marks: dict[Loc, tuple[int, int]] = {}
    if node is None:
        return Located({}, path, {(): (1, 1)})
    try:
        value = _build(node, (), marks, path)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise ConfigError(
            f"invalid YAML value: {exc.problem}",
            path=path,
            line=mark.line + 1 if mark else None,
        ) from exc
    return Located(value, path, marks)


def validate(model: type[M], doc: Located, loc: Loc = ()) -> M:
    """Validate ``doc.value`` (or the part at ``loc``) and map the first error to its line."""
    value = doc.value
    for part in loc:
        value = value[part]
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        full = (*loc, *[p for p in err["loc"] if not isinstance(p, str) or p])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see the configuration reference)"
        elif err["type"] == "missing":
            message = "required key is missing"
        extra = len(exc.errors()) - 1
        if extra:
            message += f" (and {extra} more error{'s' if extra > 1 else ''})"
        raise doc.error(full, message) from None
