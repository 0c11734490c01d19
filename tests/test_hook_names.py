"""The renamed step hooks (Task/Objective.after_optimizer_step, Trainer.on_step_end): the new
names are called, and code written for the old name ``after_step`` keeps working with a warning."""

import warnings

import pytest

from avmae.deprecation import call_hook
from avmae.objectives import Objective
from avmae.train.pretrain import PretrainTask
from avmae.train.task import Task
from avmae.train.trainer import Trainer


def _calls(obj, new, old, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call_hook(obj, new, old, *args)
    return [w for w in caught if issubclass(w.category, DeprecationWarning)]


def test_a_hook_under_its_new_name_is_called_without_a_warning():
    seen = []

    class New(Task):
        def __init__(self):
            pass

        def after_optimizer_step(self, model, step, total_steps):
            seen.append((model, step, total_steps))

    assert _calls(New(), "after_optimizer_step", "after_step", "m", 3, 10) == [] and seen == [("m", 3, 10)]


def test_an_old_task_is_called_by_its_old_name_and_its_super_call_reaches_the_new_hook():
    seen = []

    class Parent(PretrainTask):
        def __init__(self):
            pass

        def after_optimizer_step(self, model, step, total_steps):
            seen.append(("parent", step))

    class Old(Parent):
        def after_step(self, model, step, total_steps):
            super().after_step(model, step, total_steps)
            seen.append(("old", step))

    caught = _calls(Old(), "after_optimizer_step", "after_step", None, 5, 10)
    assert seen == [("parent", 5), ("old", 5)]
    assert caught and "'after_step' is now called 'after_optimizer_step'" in str(caught[0].message)


def test_old_names_of_objective_and_trainer_hooks():
    seen = []

    class Ema(Objective):
        def after_optimizer_step(self, model, step, total_steps):
            seen.append(step)

    with pytest.warns(DeprecationWarning, match="after_optimizer_step"):
        Ema().after_step(None, 7, 10)  # a caller of the old name
    assert seen == [7]

    class OldTrainer(Trainer):
        def __init__(self):
            pass

        def after_step(self, step):
            seen.append(("trainer", step))

    assert _calls(OldTrainer(), "on_step_end", "after_step", 8) and seen[-1] == ("trainer", 8)
    assert Trainer.after_step.renamed_to == "on_step_end" and Task.after_step.renamed_to == "after_optimizer_step"
