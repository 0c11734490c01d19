"""A decoder (``model.params.decoder_params: {depth: 2, hidden: 64}``): a per-token MLP, no attention."""

import torch.nn as nn

from avmae.decoders import Decoder


class MlpDecoder(Decoder):
    def __init__(self, *, depth: int = 1, hidden: int = 64, **kw) -> None:
        kw.pop("num_heads", None)  # given to every decoder; this one has no attention
        super().__init__(**kw)  # embedding, mask tokens, fixed positions, norm, prediction heads
        d = self.embed_dim
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)) for _ in range(depth)
        )

    def forward_blocks(self, cls, tokens):  # {modality: [B, L, D]} in the original token order
        for blk in self.blocks:
            tokens = {m: x + blk(x) for m, x in tokens.items()}
        return tokens
