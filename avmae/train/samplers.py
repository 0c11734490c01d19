"""The order of each epoch: ``EpochSampler`` (a seeded permutation) and balanced (weighted) sampling
for AudioSet-style fine-tuning, plus the dataset wrappers the trainer's loader uses
(``EpochIndexed``: items indexed by ``(epoch, index)``; ``MemoryCached``).

Balanced sampling:

AudioMAE's AS-2M recipe draws every "epoch" ``epoch_len = 200,000`` clips from the full set with
``WeightedRandomSampler(weights, epoch_len, replacement=False)`` seeded by ``seed + epoch``, and
each of the W processes takes ``indices[rank::W]`` (``DistributedSamplerWrapper``). The weights
are ``avmae.sampling.balanced_weights``: ``1000 / (label count + 0.01)`` summed over a clip's
labels, so clips of rare classes come up more often.

``BalancedSampler`` does the same with a ``torch.Generator``, so the draw of an epoch depends on
``(seed, epoch)`` alone and is identical on every process. The epoch is cut to a whole number of
``global_batch`` items (and of ``num_replicas``), so the ranks' shares have one length and, taken
together, hold every drawn index exactly once.

Two ways to use it:

- ``num_replicas``/``rank`` given (plain DDP): each rank iterates its own share.
- ``num_replicas=None`` (the trainer; accelerate shards whole batches over processes): it yields
  the global order; ``with_epoch=True`` yields ``(epoch, index)`` pairs, as ``EpochSampler`` does,
  and ``set_position(epoch, start)`` resumes in the middle of an epoch.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset, Sampler

_logger = logging.getLogger(__name__)

__all__ = ["EpochSampler", "EpochIndexed", "MemoryCached", "BalancedSampler", "balanced_sampler"]


class EpochSampler(Sampler):
    """The global order of one epoch, as ``(epoch, index)`` pairs.

    The order is ``torch.randperm`` from a generator seeded by (seed, epoch), cut to a whole
    number of ``global_batch`` items (batch x accumulation x processes, so every process gets the
    same number of full optimizer steps and no item twice). accelerate hands batch i of this order
    to process ``i % num_processes``. ``set_position(epoch, start)`` picks the epoch and skips
    the ``start`` items already consumed (resume). The epoch travels with the index, so datasets
    in persistent DataLoader workers see it.
    """

    def __init__(self, num_items: int, *, global_batch: int, seed: int = 0, shuffle: bool = True) -> None:
        if num_items < global_batch:
            raise ValueError(f"{num_items} items are fewer than one global batch of {global_batch}")
        self.num_items = num_items
        self.global_batch = global_batch
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    @property
    def items_per_epoch(self) -> int:
        return self.num_items // self.global_batch * self.global_batch

    def set_position(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.items_per_epoch:
            raise ValueError(f"start {start} outside the epoch's {self.items_per_epoch} items")
        self.epoch, self.start = int(epoch), int(start)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_items)[: self.items_per_epoch]
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=g)[: self.items_per_epoch]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch = self.epoch
        for i in self.order(epoch)[self.start :].tolist():
            yield (epoch, i)

    def __len__(self) -> int:
        return self.items_per_epoch - self.start


class MemoryCached(Dataset):
    """Items of ``dataset`` kept after their first load (each DataLoader worker keeps its own).
    Only for datasets whose items do not change between epochs."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._items: Dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # num_classes, multilabel, ...
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        if index not in self._items:
            self._items[index] = self.dataset[index]
        return self._items[index]


class EpochIndexed(Dataset):
    """``dataset`` indexed by ``(epoch, index)``: calls ``dataset.set_epoch`` when the epoch changes."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._epoch: Optional[int] = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        if epoch != self._epoch:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            self._epoch = epoch
        return self.dataset[index]


class BalancedSampler(Sampler):
    """Per-epoch weighted draw of ``num_samples_per_epoch`` indices.

    Args:
        weights: ``[N]`` non-negative sampling weights (an item of weight 0 is never drawn).
        num_samples_per_epoch: items drawn per epoch, all ranks together (None: N); rounded down
            to a multiple of ``lcm(global_batch, num_replicas)``.
        replacement: draw with replacement (AudioMAE's AS-2M recipe: False).
        seed: the draw of epoch e is seeded by ``seed + e``.
        num_replicas, rank: this process's share, ``indices[rank::num_replicas]``
            (None: the global order, for a loader that shards batches itself).
        global_batch: cut the epoch to whole global batches.
        with_epoch: yield ``(epoch, index)`` pairs instead of indices.
    """

    def __init__(
        self,
        weights: Union[torch.Tensor, Sequence[float]],
        num_samples_per_epoch: Optional[int] = None,
        *,
        replacement: bool = False,
        seed: int = 0,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
        global_batch: int = 1,
        with_epoch: bool = False,
    ) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if w.numel() == 0:
            raise ValueError("weights is empty")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("weights must be finite and >= 0")
        nonzero = int((w > 0).sum())
        if nonzero == 0:
            raise ValueError("every weight is 0: nothing can be drawn")
        if (num_replicas is None) != (rank is None):
            raise ValueError("give both num_replicas and rank, or neither")
        world = 1 if num_replicas is None else int(num_replicas)
        if world < 1 or (rank is not None and not 0 <= rank < world):
            raise ValueError(f"rank {rank} outside 0..{world - 1}")
        if global_batch < 1:
            raise ValueError(f"global_batch must be >= 1, got {global_batch}")
        requested = w.numel() if num_samples_per_epoch is None else int(num_samples_per_epoch)
        if requested < 1:
            raise ValueError(f"num_samples_per_epoch must be >= 1, got {requested}")
        if not replacement and requested > nonzero:
            raise ValueError(
                f"cannot draw {requested} items without replacement from {nonzero} items of non-zero weight; "
                "lower the epoch length or draw with replacement"
            )
        multiple = math.lcm(int(global_batch), world)
        total = requested // multiple * multiple
        if total < 1:
            raise ValueError(f"{requested} items per epoch are fewer than one global batch of {multiple}")
        if total != requested:
            _logger.info(
                "balanced sampling: %d items per epoch (the %d asked for, cut to whole batches of %d)",
                total,
                requested,
                multiple,
            )
        self.weights = w
        self.replacement = bool(replacement)
        self.seed = int(seed)
        self.num_replicas = num_replicas
        self.rank = rank
        self.world = world
        self.total = total
        self.with_epoch = bool(with_epoch)
        self.epoch = 0
        self.start = 0

    @property
    def items_per_epoch(self) -> int:
        """Items drawn per epoch, all ranks together."""
        return self.total

    @property
    def num_samples(self) -> int:
        """This rank's share of an epoch (the whole epoch without ``num_replicas``)."""
        return self.total // self.world

    def set_epoch(self, epoch: int) -> None:
        self.set_position(epoch, 0)

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Epoch to draw, and how many of this rank's items of it to skip (resume)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} outside the epoch's {self.num_samples} items")
        self.epoch, self.start = int(epoch), int(start)

    def order(self, epoch: int) -> torch.Tensor:
        """The global draw of ``epoch`` (``[items_per_epoch]`` int64), identical on every process."""
        g = torch.Generator()
        g.manual_seed(self.seed + int(epoch))
        return torch.multinomial(self.weights, self.total, replacement=self.replacement, generator=g)

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's share of ``epoch``: ``order(epoch)[rank::num_replicas]``."""
        order = self.order(epoch)
        return order if self.rank is None else order[self.rank :: self.world]

    def __iter__(self) -> Iterator[Union[int, Tuple[int, int]]]:
        epoch = self.epoch
        for i in self.indices(epoch)[self.start :].tolist():
            yield (epoch, i) if self.with_epoch else i

    def __len__(self) -> int:
        return self.num_samples - self.start


def balanced_sampler(cfg, train_set, items_per_epoch: int, *, global_batch: int) -> BalancedSampler:
    """The trainer's sampler for ``data.balanced``: weights from ``data.sample_weights`` (one
    float per item) or ``avmae.sampling.balanced_weights`` of the training set's labels;
    ``items_per_epoch`` draws (``data.epoch_len``) per epoch, ``data.replacement``, seeded by
    ``train.seed + epoch``; yields ``(epoch, index)`` pairs."""
    from ..config import ConfigError
    from ..sampling import balanced_weights, load_weights

    d = cfg.data
    if d.sample_weights is not None:
        weights = load_weights(d.sample_weights)
        if weights.numel() != len(train_set):
            raise ConfigError(
                "data.sample_weights",
                f"{d.sample_weights} holds {weights.numel()} weights for {len(train_set)} training items",
            )
    else:
        items, class_ids = getattr(train_set, "items", None), getattr(train_set, "class_ids", None)
        if items is None or not class_ids:
            raise ConfigError(
                "data.balanced",
                f"needs labelled items to weight ({type(train_set).__name__} has no items/class_ids); give"
                " data.sample_weights",
            )
        weights = balanced_weights(items, class_ids)
    try:
        return BalancedSampler(
            weights,
            items_per_epoch,
            replacement=d.replacement,
            seed=cfg.train.seed,
            global_batch=global_batch,
            with_epoch=True,
        )
    except ValueError as exc:
        raise ConfigError("data.epoch_len", str(exc)) from None
