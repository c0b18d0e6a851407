"""Model version names: the ASCII decimal folder and URL segments that name a version.

``str.isdigit`` is true for Unicode digits (``²``, ``①``, Arabic-Indic ``٣``) that
``int()`` refuses or reads differently, so every place that tells a version name from any
other string asks here instead.
"""

from __future__ import annotations

from servegraph.runtime.protocol.errors import InvalidInput


def is_version_name(text: str) -> bool:
    """True for a non-empty run of ASCII digits ``0-9`` (what a version folder is called)."""
    return text.isascii() and text.isdigit()


def parse_version(text: str) -> int | None:
    """The version number ``text`` names, or None when it is not a version name."""
    return int(text) if is_version_name(text) else None


def requested_version(text: str, model: str) -> int:
    """The version a request names for ``model``; 400 when it is not a decimal number
    (as Triton: "failed to get model version from specified version string")."""
    number = parse_version(text)
    if number is None:
        raise InvalidInput(
            f"version of model '{model}' must be a decimal number such as '1', got {text!r}"
        )
    return number
