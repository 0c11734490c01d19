"""``CheckpointError``, below ``avmae.checkpoint`` and the layout readers it calls
(``avmae.formats``), so that none of them imports another back."""

from __future__ import annotations

__all__ = ["CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the model. The message names the file."""
