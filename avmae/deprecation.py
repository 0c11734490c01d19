"""Renamed extension hooks: the old name keeps working, with a ``DeprecationWarning``.

``deprecated_alias(new, old)`` is the method to leave under the old name in a base class: a call
by the old name (a caller, or an old subclass's ``super().<old>(...)``) warns and runs ``new``.
``call_hook(obj, new, old, *args)`` is how the framework calls a renamed hook: ``obj``'s ``new``,
unless its class (or a patch of it) still implements ``old``; then that, with a warning.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Set, Tuple

__all__ = ["deprecated_alias", "call_hook"]

_warned: Set[Tuple[type, str]] = set()


def _warn(cls: type, old: str, new: str) -> None:
    if (cls, old) not in _warned:
        _warned.add((cls, old))
        warnings.warn(
            f"{cls.__module__}.{cls.__qualname__}: the hook {old!r} is now called {new!r}; rename it",
            DeprecationWarning,
            stacklevel=3,
        )


def deprecated_alias(new: str, old: str) -> Callable[..., Any]:
    """A method for the old name ``old`` that warns and calls ``self.<new>``."""

    def alias(self, *args: Any, **kwargs: Any) -> Any:
        _warn(type(self), old, new)
        return getattr(self, new)(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated: the old name of ``{new}``."
    alias.renamed_to = new  # type: ignore[attr-defined]
    return alias


def call_hook(obj: Any, new: str, old: str, *args: Any) -> Any:
    """Call ``obj.<new>(*args)``, or ``obj.<old>(*args)`` where a subclass or a patch implements
    the old name (with a ``DeprecationWarning``, once per class)."""
    legacy = getattr(type(obj), old, None)
    if legacy is not None and getattr(legacy, "renamed_to", None) != new:
        _warn(type(obj), old, new)
        return getattr(obj, old)(*args)
    return getattr(obj, new)(*args)
