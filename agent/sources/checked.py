"""Checked access to decoded JSON: a value is validated where the reader takes it.

Why: AWS describe-* output is input, not truth. A snapshot may be hand-edited, cut short or
produced by a newer API than the one we know, and a value the reader passes on unchecked
(an endpoint IP ``"not-an-ip"``, a VPC CIDR ``"banana"``) fails much later, far from the file
that holds it, or worse, yields a confident "pass". So the reader never indexes raw JSON:
it walks it through :class:`Node`, whose accessors check type and format and know the
member path (``Vpcs[0].CidrBlock``). A bad value raises :class:`Invalid`; the snapshot
reader turns that into one ``SourceError`` naming the file and the path, in one place.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.model import is_ip  # one definition, ground floor (re-exported)

#: an id longer than this is not an AWS id (ARNs are at most 2048 characters)
MAX_ID = 2048
#: after the prefix AWS prints hex; accepting more (hand-made ids such as ``acl-vpc-2-client``)
#: costs nothing, the prefix is what tells one kind of id from another
_ID_BODY = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]*")
_ACCOUNT_ID = re.compile(r"[0-9]{12}")


class Invalid(Exception):
    """A value at ``where`` is not what the reader needs.

    ``shape`` marks a structural problem (missing member, wrong JSON type) as opposed to a
    well-typed value that is out of range or malformed (a CIDR that is not one).
    """

    def __init__(self, where: str, problem: str, *, shape: bool = False) -> None:
        self.where = where or "(top level)"
        self.problem = problem
        self.shape = shape
        super().__init__(f"{self.where}: {problem}")


_MISSING: Any = object()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Node:
    """A decoded JSON value and its member path from the file's top level."""

    value: Any
    where: str = ""

    # --- navigation ---------------------------------------------------------------------
    def at(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.where}[{key}]"
        return f"{self.where}.{key}" if self.where else key

    def obj(self) -> dict[str, Any]:
        if not isinstance(self.value, dict):
            raise Invalid(self.where, f"expected an object, got {_kind(self.value)}", shape=True)
        return self.value

    def has(self, key: str) -> bool:
        return self.obj().get(key) is not None

    def opt(self, key: str) -> Node | None:
        """The member, or ``None`` when it is absent or JSON null (AWS omits freely)."""
        value = self.obj().get(key)
        return None if value is None else Node(value, self.at(key))

    def member(self, key: str) -> Node:
        node = self.opt(key)
        if node is None:
            raise Invalid(self.at(key), "missing member", shape=True)
        return node

    def items(self, key: str, *, required: bool = False) -> list[Node]:
        """A list member's elements; absent means empty unless ``required``."""
        node = self.member(key) if required else self.opt(key)
        if node is None:
            return []
        if not isinstance(node.value, list):
            raise Invalid(node.where, f"expected a list, got {_kind(node.value)}", shape=True)
        return [Node(v, node.at(i)) for i, v in enumerate(node.value)]

    # --- scalars --------------------------------------------------------------------------
    def text(self, key: str, default: Any = _MISSING) -> Any:
        node = self.opt(key)
        if node is None:
            if default is _MISSING:
                raise Invalid(self.at(key), "missing member", shape=True)
            return default
        if not isinstance(node.value, str):
            raise Invalid(node.where, f"expected a string, got {_kind(node.value)}", shape=True)
        return node.value

    def flag(self, key: str, default: bool) -> bool:
        node = self.opt(key)
        if node is None:
            return default
        if not isinstance(node.value, bool):
            raise Invalid(node.where, f"expected a boolean, got {_kind(node.value)}", shape=True)
        return node.value

    def integer(
        self, key: str, default: Any = _MISSING, *, lo: int | None = None, hi: int | None = None
    ) -> Any:
        node = self.opt(key)
        if node is None:
            if default is _MISSING:
                raise Invalid(self.at(key), "missing member", shape=True)
            return default
        value = node.value
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(node.where, f"expected an integer, got {_kind(value)}", shape=True)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise Invalid(node.where, f"{_short(value)} is not in {lo}..{hi}")
        return value

    def port(self, key: str, default: Any = _MISSING) -> Any:
        return self.integer(key, default, lo=0, hi=65535)

    # --- formats --------------------------------------------------------------------------
    def ip(self, key: str, default: Any = _MISSING) -> Any:
        return self._formatted(key, default, is_ip, "an IP address")

    def cidr(self, key: str, default: Any = _MISSING) -> Any:
        return self._formatted(key, default, _is_cidr, "a CIDR")

    def id(self, key: str, prefix: str, default: Any = _MISSING) -> Any:
        """An AWS resource id: ``prefix`` then a word (``vpc-0abc…``), no spaces or slashes."""

        def ok(text: str) -> bool:
            return (
                text.startswith(prefix)
                and len(text) <= MAX_ID
                and _ID_BODY.fullmatch(text[len(prefix) :]) is not None
            )

        return self._formatted(key, default, ok, f"a {prefix}… id")

    def arn(self, key: str, default: Any = _MISSING) -> Any:
        return self._formatted(key, default, _is_arn, "an ARN")

    def account_id(self, key: str, default: Any = _MISSING) -> Any:
        return self._formatted(key, default, _ACCOUNT_ID.fullmatch, "a 12-digit account id")

    def _formatted(self, key: str, default: Any, ok: Callable[[str], object], what: str) -> Any:
        """A string member in one format (``ok`` accepts it), or ``default`` when absent.

        One shape for every format, so each reports a bad value the same way:
        "<where>: <value> is not <what>".
        """
        if default is not _MISSING and self.opt(key) is None:
            return default
        text = self.text(key)
        if not ok(text):
            raise Invalid(self.at(key), f"{_short(text)} is not {what}")
        return text


def _is_cidr(text: str) -> bool:
    if "/" not in text:
        return False
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _is_arn(text: str) -> bool:
    return text.startswith("arn:") and len(text) <= MAX_ID and not any(c.isspace() for c in text)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


__all__ = ["Invalid", "Node", "is_ip"]
