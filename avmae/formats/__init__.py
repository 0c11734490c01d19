"""Released checkpoints of other code bases: a reader (fairseq files without fairseq) and key
layouts (EAT / SSLAM, BEATs).

Each layout is a ``avmae.checkpoint.CheckpointFormat`` registered in ``CHECKPOINT_FORMATS``
(``@register_checkpoint_format``): ``detect`` by marker keys, ``convert`` its keys to avmae's,
``describe`` the model it holds (registered name, params and input statistics, from the shapes and
the file's config, which ``describe`` receives as ``meta``), ``label`` the layout reported.
"""

from __future__ import annotations

from . import beats, eat  # noqa: F401  (registers the EAT and BEATs checkpoint formats)
