"""Released checkpoints of other code bases: readers (fairseq) and key layouts (EAT / SSLAM, BEATs).

Each layout is a set of plain functions: detect it by marker keys, describe the model it holds
(registered name, params and input statistics, from the shapes and the file's config), and map its
keys to avmae's. They are registered here with ``avmae.checkpoint.register_format`` (key mapping
for ``load_checkpoint``) and ``avmae.hub.register_spec_detector`` (the model ``load_pretrained``
builds for a file that names none).
"""

from __future__ import annotations


def _register() -> None:
    from ..checkpoint import register_format
    from ..hub import register_spec_detector
    from . import beats, eat

    for layout in ("eat-pretrain", "eat-finetune", "eat-hf"):
        register_format(layout, lambda sd, _layout=layout: eat.eat_layout(sd) == _layout, eat.map_eat)
    register_spec_detector("eat", eat.eat_spec)
    register_format("beats", beats.detect_beats, beats.map_beats)
    register_spec_detector("beats", beats.beats_spec)


_register()
