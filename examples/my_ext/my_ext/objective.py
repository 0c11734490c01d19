"""An objective (``objectives: [{name: masked_l1, power: 1.0, weight: 1.0}]``): the mean
``|prediction - target| ** power`` over the masked patches."""

from dataclasses import dataclass

from avmae.objectives import Objective, ObjectiveOutput


@dataclass
class MaskedL1Options:
    power: float = 1.0


class MaskedL1(Objective):
    options = MaskedL1Options

    def __init__(self, *, power: float = 1.0, weight: float = 1.0) -> None:
        super().__init__(weight=weight)
        self.power = power

    def forward(self, model, inputs, out):
        terms = {}
        for m, mod in model.modalities.items():
            err = (out.pred[m].float() - mod.patchify(inputs[m]).float()).abs().pow(self.power).mean(-1)
            terms[f"l1_{m}"] = (err * out.mask[m]).sum() / out.mask[m].sum()
        return ObjectiveOutput(loss=sum(terms.values()), terms=terms)
