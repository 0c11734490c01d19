"""Released checkpoints of other code bases: their key layouts (EAT / SSLAM, BEATs). Their fairseq
files are read without fairseq by ``avmae.fairseq_reader``, below this package (``avmae.checkpoint``
reads with it).

Each layout is a ``avmae.checkpoint.CheckpointFormat`` registered in ``CHECKPOINT_FORMATS``
(``@register_checkpoint_format``): ``detect`` by marker keys, ``convert`` its keys to avmae's,
``describe`` the model it holds (registered name, params and input statistics, from the shapes and
the file's config, which ``describe`` receives as ``meta``), ``label`` the layout reported.
"""

from __future__ import annotations

from . import beats, eat  # noqa: F401  (registers the EAT and BEATs checkpoint formats)
