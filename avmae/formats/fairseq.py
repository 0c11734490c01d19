"""The fairseq reader under its former name: it lives in ``avmae.fairseq_reader`` (below
``avmae.checkpoint``, which reads fairseq files with it)."""

from ..fairseq_reader import (
    EMA_PREFIX,
    fairseq_state,
    is_config_global,
    is_fairseq_container,
    read_fairseq,
    restricted_load,
    take_teacher,
    to_plain,
)

__all__ = [
    "read_fairseq",
    "restricted_load",
    "is_fairseq_container",
    "is_config_global",
    "fairseq_state",
    "to_plain",
    "EMA_PREFIX",
    "take_teacher",
]
