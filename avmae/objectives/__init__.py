"""Objectives: what a pretraining step optimises (registry ``OBJECTIVES``, group ``avmae.objectives``).

Built in: ``mae_mse`` (masked-patch MSE, norm-pix targets), ``info_nce`` (contrastive between two
modalities). See ``base`` for the contract.
"""

from .base import Objective, ObjectiveOutput, ObjectiveSpec, build_objective, build_objectives
from .contrastive import InfoNCE
from .reconstruction import MaskedReconstruction

__all__ = [
    "Objective",
    "ObjectiveOutput",
    "ObjectiveSpec",
    "build_objective",
    "build_objectives",
    "MaskedReconstruction",
    "InfoNCE",
]
