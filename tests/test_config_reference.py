"""docs/CONFIGURATION.md documents every key of the agent configuration schema."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from agent.config import ClientConfig, ProviderConfig

DOC = (Path(__file__).resolve().parent.parent / "docs" / "CONFIGURATION.md").read_text()
DOCUMENTED = set(re.findall(r"`([a-z0-9_]+)`", DOC))


def _keys(model: type[BaseModel]) -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(field.alias or name)
        for arg in [field.annotation, *typing.get_args(field.annotation)]:
            for inner in [arg, *typing.get_args(arg)]:
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    keys |= _keys(inner)
    return keys


def test_every_client_key_is_documented() -> None:
    assert _keys(ClientConfig) - DOCUMENTED == set()


def test_every_provider_key_is_documented() -> None:
    assert _keys(ProviderConfig) - DOCUMENTED == set()
