"""The training hot path (masking, forward, losses, backward) has no data-dependent op that makes
the host wait for the device: no ``.item()``/``bool(tensor)``, ``nonzero``, ``masked_select`` or
boolean indexing. On CPU nothing waits, so the ops are recorded at the dispatcher instead."""

from typing import Any, List

import pytest
import torch
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
    assert rec.found == ["aten._local_scalar_dense.default", "aten.index_put_.default with a boolean index", "aten.index.Tensor with a boolean index"]


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
    clf = avmae.create_model("audiomae_tiny_cls", num_classes=5, target_length=64, mask_t_prob=0.25, mask_f_prob=0.25).train()
    x = {"audio": torch.randn(2, 1, 64, 128)}
    target = torch.eye(5)[[1, 3]]
    with RecordSyncs() as rec:
        classification_loss(clf(x), target, loss, label_smoothing=0.1).backward()
    assert rec.found == []
