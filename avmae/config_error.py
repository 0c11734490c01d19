"""``ConfigError``, below both the config schema (``avmae.config``) and the entries' options
(``avmae.options``), so that neither imports the other back."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration that cannot run. The message starts with the offending key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")
