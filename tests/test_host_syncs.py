"""The training hot path (masking, forward, losses, backward) has no data-dependent op that makes
the host wait for the device: no ``.item()``/``bool(tensor)``, ``nonzero``, ``masked_select`` or
boolean indexing. On CPU nothing waits, so the ops are recorded at the dispatcher instead. The
trainer's loop with fused AdamW reads no tensor value (``.tolist()``, ``.item()``, recorded as torch
functions) outside its log and checkpoint steps."""

from typing import Any, Callable, List, Tuple

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import avmae
from avmae.masking import structured_time_freq_mask
from avmae.train.finetune import classification_loss

aten = torch.ops.aten
_SYNCING = {aten.nonzero.default, aten._local_scalar_dense.default, aten.masked_select.default, aten.is_nonzero.default}
_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


class RecordSyncs(TorchDispatchMode):
    """Records the ops that would block the host on an accelerator."""

    def __init__(self) -> None:
        super().__init__()
        self.found: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        kwargs = kwargs or {}
        if func in _SYNCING:
            self.found.append(str(func))
        elif func.overloadpacket in _INDEXING:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                self.found.append(f"{func} with a boolean index")
        return func(*args, **kwargs)


def test_the_recorder_sees_syncs():
    x = torch.randn(4, 3)
    with RecordSyncs() as rec:
        float(x.sum())
        x[x > 0] = 0
        x[x.sum(1) > 0]
    assert rec.found == [
        "aten._local_scalar_dense.default",
        "aten.index_put_.default with a boolean index",
        "aten.index.Tensor with a boolean index",
    ]


def test_structured_masking_has_no_sync_and_the_former_mask():
    x, nt, nf = torch.randn(2, 32, 3), torch.rand(2, 8), torch.rand(2, 4)
    with RecordSyncs() as rec:
        _, removed = structured_time_freq_mask(x, (8, 4), 0.25, 0.5, nt, nf)
    assert rec.found == []
    # the values of the former boolean-mask assignment
    rows = torch.zeros(2, 8, dtype=torch.bool).scatter_(1, nt.argsort(1)[:, :6], True)
    cols = torch.zeros(2, 4, dtype=torch.bool).scatter_(1, nf.argsort(1)[:, :2], True)
    expect = torch.ones(2, 8, 4)
    expect[rows[:, :, None] & cols[:, None, :]] = 0
    assert removed.dtype == torch.float32 and torch.equal(removed, expect.reshape(2, 32))


@pytest.mark.parametrize("decoder", ["global", "swin", "hybrid"])
def test_pretraining_step_has_no_sync(decoder):
    model = avmae.create_model("audiomae_tiny", decoder=decoder, target_length=64)
    x = {"audio": torch.randn(2, 1, 64, 128)}
    with RecordSyncs() as rec:
        model(x).loss.backward()
    assert rec.found == []


@pytest.mark.parametrize("name, frames", [("avmae_tiny", 4), ("cav_mae_tiny", 1)])
def test_audio_visual_pretraining_step_has_no_sync(name, frames):
    model = avmae.create_model(name)
    x = {"audio": torch.randn(2, 1, 64, 128), "video": torch.randn(2, frames, 3, 64, 64)}
    with RecordSyncs() as rec:
        model(x).loss.backward()
    assert rec.found == []


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_finetuning_step_with_structured_masking_has_no_sync(loss):
    clf = avmae.create_model(
        "audiomae_tiny_cls", num_classes=5, target_length=64, mask_t_prob=0.25, mask_f_prob=0.25
    ).train()
    x = {"audio": torch.randn(2, 1, 64, 128)}
    target = torch.eye(5)[[1, 3]]
    with RecordSyncs() as rec:
        classification_loss(clf(x), target, loss, label_smoothing=0.1).backward()
    assert rec.found == []


# ------------------------------------------------------------------ the trainer's loop

_READS = {"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"}


class RecordReads(TorchFunctionMode):
    """Records the calls that copy tensor values to Python (``.item()``, ``.tolist()``,
    ``bool(t)``, ...): on an accelerator each waits for the device. They happen above the
    dispatcher (``.tolist()`` of a CPU tensor reaches no op), so they are seen as torch functions.
    ``where()`` labels each read (e.g. the trainer's step)."""

    def __init__(self, where: Callable[[], Any] = lambda: None) -> None:
        super().__init__()
        self.where = where
        self.found: List[Tuple[Any, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None) -> Any:
        if getattr(func, "__name__", None) in _READS:
            self.found.append((self.where(), func.__name__))
        return func(*args, **(kwargs or {}))


def test_the_read_recorder_sees_reads():
    x = torch.arange(3.0)
    with RecordReads() as rec:
        x.tolist()
        x[0].item()
        bool(x[1])
        float(x[2])
        y = torch.where(x > 0, 5, x)  # device ops with a Python scalar read nothing
    assert [name for _, name in rec.found] == ["tolist", "item", "__bool__", "__float__"]
    assert y.tolist() == [0.0, 5.0, 5.0]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """12 training clips of the demo classes (6 steps of 2 per epoch)."""
    from avmae.data import ensure_demo_audio

    return ensure_demo_audio(tmp_path_factory.mktemp("clips") / "demo", num_train_per_class=2, num_eval_per_class=1)


def _run_config(clips, out, *extra):
    from avmae.config import load_config

    return load_config(
        [],
        [
            "model.name=audiomae_tiny",
            f"data.train_manifest={clips / 'train.json'}",
            f"data.label_csv={clips / 'class_labels_indices.csv'}",
            "data.target_length=64",
            "data.num_mel_bins=64",
            "data.num_workers=0",
            "data.cache=true",
            "train.batch_size=2",
            "train.cpu=true",
            "train.mixed_precision=no",
            "optim.fused=true",
            "optim.lr=2e-3",
            "schedule.epochs=1",
            "schedule.max_steps=6",
            "schedule.warmup_epochs=0",
            "eval.every_n_epochs=-1",
            "logging.every_n_steps=5",
            "logging.progress=false",
            "logging.tensorboard=false",
            "checkpoint.every_n_epochs=0",
            "checkpoint.every_n_steps=3",
            f"output_dir={out}",
            *extra,
        ],
    )


@pytest.mark.parametrize("device_skip", [True, False])
def test_fused_adamw_training_steps_read_nothing_between_log_and_checkpoint_steps(clips, tmp_path, device_skip):
    """With fused AdamW the non-finite skip is decided on the device: a step that neither logs
    nor saves reads nothing (the reference, ``device_skip=False``, reads the flags every step).
    The data pipeline's reads are left out: on a real run they happen on CPU tensors, in workers."""
    import json
    import traceback

    from avmae.train import PretrainTask, Trainer
    from avmae.train.optim import fused_adamw_devices

    if "cpu" not in fused_adamw_devices():
        pytest.skip(f"torch {torch.__version__} has no fused AdamW for the CPU")

    class NaNAtCall2(PretrainTask):
        calls = 0

        def compute_loss(self, model, inputs, batch):
            loss, parts = super().compute_loss(model, inputs, batch)
            self.calls += 1
            return (loss * float("nan") if self.calls == 2 else loss), parts

    class Marked(Trainer):
        done = 0  # steps done: reads while step done + 1 is being taken, logged and saved

        def after_step(self, step):
            self.done = step

    Marked.device_skip = device_skip
    cfg = _run_config(clips, tmp_path / "run")
    trainer = Marked(cfg, task=NaNAtCall2(cfg))

    class TrainerReads(RecordReads):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", None) in _READS and any(
                "torch/utils/data/" in f.filename.replace("\\", "/") for f in traceback.extract_stack()
            ):
                return func(*args, **(kwargs or {}))  # the data pipeline's
            return super().__torch_function__(func, types, args, kwargs)

    with TrainerReads(lambda: trainer.done + 1) as rec:
        result = trainer.fit()
    steps_read = sorted({step for step, _ in rec.found})
    # log steps 1, 5, 6 (the last); checkpoints at 3 and 6
    if device_skip:
        assert steps_read == [1, 3, 5, 6]
    else:
        assert steps_read == [1, 2, 3, 4, 5, 6]
    # the counts read at the checkpoint and at the end are exact: step 2 was skipped
    assert result.steps == 6 and result.skipped_steps == 1
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step_0000003" / "trainer_state.json").read_text())
    assert saved["skipped_steps"] == 1 and saved["nonfinite_streak"] == 0
