"""EAT-style efficient audio pretraining for avmae, as a plugin written against avmae's public
extension points only (it imports nothing private and registers through entry points).

EAT (Chen et al., IJCAI 2024) reaches AudioMAE's accuracy with far less pretraining by changing
what a step optimises, not the encoder:

    clip --EMA teacher (unmasked)--> mean of its top-k block outputs, each instance-normalised,
                                      then layer-normalised = targets [B, L, D]
    clip x num_clones --inverse block masking (avmae's ``inverse_block`` masker)--> student
         --light CNN decoder (``eat_cnn``)--> [B*C, L, D] --MSE on masked tokens--> frame loss
         student cls output --MSE to the targets' mean over tokens--> utterance loss
    after every optimizer step: teacher <- decay * teacher + (1 - decay) * student

The pieces, each registered by name: the model presets ``eat_vit_base``, ``eat_demo`` and
``eat_tiny`` (``avmae.models``), the objective ``eat_latent`` (``avmae.objectives``: the EMA
teacher, its targets and both losses) and the decoder ``eat_cnn`` (``avmae.decoders``). The
encoder is AudioMAE's ViT, so a checkpoint fine-tunes with the AudioMAE recipes unchanged
(``checkpoint.init_from``). Its recipes ship with it (``configs/``, entry-point group
``avmae.configs``): ``--config eat/pretrain_as2m`` holds the paper's values, ``eat/demo`` the CPU demo's.
"""

from pathlib import Path

from .decoder import ConvDecoder
from .objective import EMATeacherRegression
from .presets import eat, eat_demo, eat_tiny, eat_vit_base

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # --config eat/<name>

__all__ = ["CONFIG_DIR", "ConvDecoder", "EMATeacherRegression", "eat", "eat_vit_base", "eat_demo", "eat_tiny"]
