"""Strict checks of wire shapes against the google-genai SDK's own models."""

from __future__ import annotations

from typing import Any

import pydantic


def assert_strict(value: Any, path: str = "$") -> None:
    """No field the SDK model does not know and no unknown union variant, anywhere.

    The Interactions models accept extra fields and unknown variants silently,
    so a misspelt fixture would validate; this walk catches it.
    """
    if isinstance(value, pydantic.BaseModel):
        assert not getattr(value, "is_unknown", False), f"{path}: unknown variant"
        extra = value.model_extra or {}
        assert not extra, f"{path}: fields the SDK does not know: {sorted(extra)}"
        # __dict__, not getattr: reading deprecated fields would warn.
        for name, item in value.__dict__.items():
            assert_strict(item, f"{path}.{name}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            assert_strict(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            assert_strict(item, f"{path}.{key}")
