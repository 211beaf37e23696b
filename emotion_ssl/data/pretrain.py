"""Pretraining data: dataset, length-bucketed batch sampler, resumable loader, DataModule.

Reading order: `PretrainDataset` turns manifest entries into cropped `AudioItem`s;
`LengthBucketBatchSampler` groups dataset indices into batches under a padded-samples
budget, shards them over ranks and remembers how far an epoch got; `ResumableLoader`
runs the epochs (loading the planned batches through a fairseq2 DataPipeline, see
`fairseq2_pipeline.py`, or a torch DataLoader), applies crop-to-shortest batching and hands
its position to Lightning's checkpoints; `PretrainDataModule` wires them from the typed
config LightningCLI reads.

Every random choice is drawn from `np.random.default_rng([seed, epoch, stream, ...])`,
never from a global generator, so a run resumed from a checkpoint (or replayed on another
machine, with any number of workers) sees exactly the same batches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Literal

import lightning as L
import numpy as np
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from emotion_ssl.data.audio import TARGET_RATE, AudioReadError, load_audio, resampled_length
from emotion_ssl.data.batch import AudioBatch, AudioItem, collate_audio, crop_batch_to_shortest
from emotion_ssl.data.manifest import ManifestEntry, read_manifest

logger = logging.getLogger(__name__)

# Independent random streams: the same (seed, epoch) must not correlate two decisions.
_STREAM_ORDER = 0  # tie-breaking among equal bucket lengths
_STREAM_BATCH_ORDER = 1  # order of the batches in an epoch
_STREAM_LABELLED_DRAW = 2  # which labelled utterances join an epoch
_STREAM_ITEM_CROP = 3  # offset of the max_sample_size crop of one utterance
_STREAM_BATCH_CROP = 4  # offsets of the crop-to-shortest crop of one batch
_STREAM_STRATA = 5  # tie order of the labelled strata's leftover items (once per run)
_STREAM_CLASS_DRAW = 6  # the per-class labelled draws of the m-per-class mode

Backend = Literal["torch", "fairseq2"]
Decoder = Literal["soundfile", "fairseq2"]

_STRATUM_SIZE = 4
"""Minimum labelled items per length stratum of the labelled pool (see the sampler)."""


def _fairseq2_loads() -> bool:
    """Whether fairseq2's data pipeline can be imported here (warns once when not)."""
    from emotion_ssl.data.fairseq2_pipeline import load_fairseq2_data

    try:
        load_fairseq2_data()
    except ImportError as e:
        logger.warning("%s; loading data with the torch backend and soundfile instead", e)
        return False
    return True


def _rng(seed: int, epoch: int, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream, *more])


class PretrainDataset(Dataset[AudioItem]):
    """Manifest entries as 16 kHz `AudioItem`s, cropped to at most `max_sample_size`.

    - Entries shorter than `min_sample_size` (at 16 kHz) are dropped here, counted in
      `num_dropped_short` and reported with one warning.
    - A longer clip is cropped at a random offset drawn from (seed, epoch, index), so a
      resumed run crops identically; call `set_epoch` before each epoch.
    - A file that fails to read is logged (path and reason), remembered, counted in
      `num_read_failures`, and the next readable entry is returned instead, so one
      corrupt file cannot stop a long run. `num_substituted` counts those replacements.
    - A file that decodes to another length than its manifest entry says is warned about
      once (longer: cropped to the manifest length; shorter, e.g. truncated: returned as
      decoded and counted in `num_shorter`).
      With `num_workers > 0` these counters live in each worker process; the warnings
      are the record.
    - Labels: with `label_names=None` every item is unlabelled (-1). Otherwise an entry's
      label maps to its position in `label_names`, an entry without a label gets -1, and a
      label outside `label_names` is an error naming it.
    - read_audio: path -> (S,) float32 16 kHz mono, raising AudioReadError; `load_audio`
      (soundfile) by default, or `Fairseq2AudioDecoder()`. Both give identical samples.

    lengths: (N,) int64, samples each item will have at most (16 kHz, after the crop);
    the batch sampler budgets with these.
    """

    def __init__(
        self,
        entries: Sequence[ManifestEntry],
        label_names: Sequence[str] | None = None,
        *,
        max_sample_size: int = 320_000,
        min_sample_size: int = 8_000,
        seed: int = 1,
        name: str = "<entries>",
        read_audio: Callable[[str], np.ndarray] | None = None,
    ) -> None:
        if min_sample_size < 1 or max_sample_size < min_sample_size:
            raise ValueError(
                f"need 1 <= min_sample_size <= max_sample_size, got {min_sample_size} and "
                f"{max_sample_size}"
            )
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.name = name
        self.max_sample_size = max_sample_size
        self.seed = seed
        self.epoch = 0
        self.read_audio: Callable[[str], np.ndarray] = read_audio or load_audio

        index_of = {label: i for i, label in enumerate(label_names or [])}
        full_lengths: list[int] = []
        labels: list[int] = []
        kept: list[ManifestEntry] = []
        for entry in entries:
            label = -1
            if label_names is not None and entry.label is not None:
                if entry.label not in index_of:
                    raise ValueError(
                        f"{name}: entry {entry.key!r} has label {entry.label!r}, which is not "
                        f"in label_names {list(label_names)}"
                    )
                label = index_of[entry.label]
            length = resampled_length(entry.num_samples, entry.sample_rate, TARGET_RATE)
            if length < min_sample_size:
                continue
            kept.append(entry)
            full_lengths.append(length)
            labels.append(label)

        self.entries = kept
        self.num_dropped_short = len(entries) - len(kept)
        if self.num_dropped_short:
            logger.warning(
                "%s: dropped %d of %d entries shorter than min_sample_size=%d samples (%.2f s)",
                name,
                self.num_dropped_short,
                len(entries),
                min_sample_size,
                min_sample_size / TARGET_RATE,
            )
        self.labels = np.asarray(labels, dtype=np.int64)
        self._full_lengths = np.asarray(full_lengths, dtype=np.int64)
        self.lengths = np.minimum(self._full_lengths, max_sample_size)
        self.unreadable: dict[int, str] = {}
        self.num_read_failures = 0
        self.num_substituted = 0
        self.num_shorter = 0
        self._warned_longer: set[int] = set()

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crop offsets `__getitem__` draws."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> AudioItem:
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            if candidate in self.unreadable:
                continue
            try:
                waveform = self.read_audio(self.entries[candidate].path)
            except AudioReadError as e:
                self.unreadable[candidate] = e.reason
                self.num_read_failures += 1
                logger.warning(
                    "%s: skipping unreadable audio %s: %s (%d unreadable so far)",
                    self.name,
                    e.path,
                    e.reason,
                    self.num_read_failures,
                )
                continue
            if candidate != index:
                self.num_substituted += 1
            return self._crop(candidate, waveform)
        raise AudioReadError(self.name, f"none of its {len(self)} audio files could be read")

    def _crop(self, index: int, waveform: np.ndarray) -> AudioItem:
        entry = self.entries[index]
        limit = int(self.lengths[index])
        if waveform.shape[0] > self._full_lengths[index] and index not in self._warned_longer:
            # the sampler budgets with the manifest length, so never return more than that
            self._warned_longer.add(index)
            logger.warning(
                "%s: %s has %d samples at 16 kHz but its manifest entry says %d; cropping "
                "(is the manifest stale?)",
                self.name,
                entry.path,
                waveform.shape[0],
                self._full_lengths[index],
            )
        if waveform.shape[0] < self._full_lengths[index] and index not in self._warned_longer:
            # a truncated file: the batch was budgeted for the manifest length, so it pads
            self._warned_longer.add(index)
            self.num_shorter += 1
            logger.warning(
                "%s: %s decodes to %.2f s but its manifest entry says %.2f s (truncated "
                "file?); its batch is padded for the difference (%d such files so far)",
                self.name,
                entry.path,
                waveform.shape[0] / TARGET_RATE,
                self._full_lengths[index] / TARGET_RATE,
                self.num_shorter,
            )
        if waveform.shape[0] > limit:
            rng = _rng(self.seed, self.epoch, _STREAM_ITEM_CROP, index)
            offset = int(rng.integers(0, waveform.shape[0] - limit + 1))
            waveform = waveform[offset : offset + limit]
        return AudioItem(key=entry.key, waveform=waveform, label=int(self.labels[index]))


def _greedy_batch_sizes(
    sorted_lengths: np.ndarray,
    max_tokens: int,
    max_batch_size: int | None,
    extra_rows: int = 0,
    extra_length: int = 0,
) -> list[int]:
    """Sizes of consecutive batches over ascending lengths with size * longest <= max_tokens,
    where every batch also holds `extra_rows` items of length up to `extra_length` (the
    m-per-class labelled clips; not counted in the sizes returned)."""
    sizes: list[int] = []
    count = 0
    for length in sorted_lengths.tolist():
        # ascending order: the item being added is the longest of its batch
        longest = max(length, extra_length)
        full = (count + 1 + extra_rows) * longest > max_tokens or (
            count + extra_rows == max_batch_size
        )
        if count and full:
            sizes.append(count)
            count = 0
        count += 1
    if count:
        sizes.append(count)
    return sizes


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices of similar length under a padded-samples budget.

    Budget (as fairseq's max_tokens): batch_size * longest_length_in_batch <= max_tokens,
    and batch_size <= max_batch_size when given. Lengths are the cropped 16 kHz lengths.

    Each epoch: sort the items by length rounded up to `length_quantum` samples, breaking
    ties at random (so items within 0.1 s of each other change batch mates every epoch),
    cut the sorted list into batches, shuffle the batch order, and deal the batches to the
    ranks round-robin. Because the multiset of rounded (budget) lengths is the same every
    epoch, so are the batch sizes and `len(self)`: Lightning reads the length once, and every
    rank yields exactly `len(self)` batches (the list is padded by repeating batches when
    it does not divide evenly; uneven counts would deadlock DDP). Otherwise ranks get
    disjoint batches.

    Labelled mixing: `labelled_lengths` describes a second pool (dataset indices
    `len(lengths)` onward) from which `labelled_per_epoch` items join each epoch. The pool
    is cut into strata of about 4 items of neighbouring length; each stratum gives a fixed
    number of items per epoch (proportional to its size), drawn at random without
    replacement while the stratum lasts, and is budgeted at its longest length. So the
    batch count stays constant while every labelled item gets its turn. The labelled items
    go to the batches of their length: a global batch may hold none, or one per class.

    m per class (`labelled_per_class` = m > 0, instead of `labelled_per_epoch`; needs
    `labelled_classes`, the class of each pool item): every global batch (the
    `num_replicas` rank batches of one step) holds at least m labelled clips of every class
    in the pool: K * m drawn class by class (each class's items in a fresh random order per
    epoch, all used before any repeats), topped up to q * num_replicas with q =
    ceil(K * m / num_replicas) by further classes in rotation, shuffled and dealt q to each
    rank batch. Each batch is planned with room for q labelled clips at the length of its
    longest unlabelled item, or at `labelled_budget` when that is longer (the length at
    which every class has q clips), and takes, for each of its slots, a clip of that class
    no longer than that: the least used so far in the epoch, ties at random, never twice in
    one batch while the class has enough. Short clips can serve every batch, long ones only
    long batches; the labelled clips follow the length of their batch as the unlabelled
    stream's do. The batch list is padded to whole steps by repeating unlabelled batches
    (with fresh labelled draws).

    Resume: `state_dict()` is {"epoch", "batches_yielded"}; after `load_state_dict` the
    next `__iter__` skips the batches of that epoch already yielded. `set_epoch` to a new
    epoch starts it from its first batch; like DistributedSampler, iterating again
    without `set_epoch` replays the same epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        max_tokens: int,
        *,
        max_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
        length_quantum: int = 1_600,
        labelled_lengths: Sequence[int] | np.ndarray | None = None,
        labelled_per_epoch: int = 0,
        labelled_classes: Sequence[int] | np.ndarray | None = None,
        labelled_per_class: int = 0,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        labelled = np.asarray(
            labelled_lengths if labelled_lengths is not None else [], dtype=np.int64
        )
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank {rank} of {num_replicas}")
        if length_quantum < 1 or seed < 0:
            raise ValueError(
                f"need length_quantum >= 1 and seed >= 0, got {length_quantum}, {seed}"
            )
        if labelled_per_epoch < 0 or (labelled_per_epoch > 0 and labelled.size == 0):
            raise ValueError(
                f"labelled_per_epoch={labelled_per_epoch} needs a non-empty labelled pool "
                f"(got {labelled.size} labelled lengths)"
            )
        if labelled_per_class < 0 or (
            labelled_per_class > 0
            and (labelled.size == 0 or labelled_per_epoch > 0 or labelled_classes is None)
        ):
            raise ValueError(
                f"labelled_per_class={labelled_per_class} needs a non-empty labelled pool "
                f"({labelled.size} labelled lengths), the class of each (labelled_classes) and "
                f"labelled_per_epoch=0 (got {labelled_per_epoch})"
            )
        classes = np.asarray(labelled_classes if labelled_classes is not None else [], np.int64)
        if labelled_per_class > 0 and (classes.shape != labelled.shape or classes.min() < 0):
            raise ValueError(
                f"labelled_classes must give a class >= 0 for each of the {labelled.size} "
                f"labelled items, got {classes.size} classes, min {classes.min(initial=0)}"
            )
        all_lengths = np.concatenate([self.lengths, labelled])
        if self.lengths.size == 0:
            raise ValueError("LengthBucketBatchSampler got no lengths (is the manifest empty?)")
        if all_lengths.min() < 1 or all_lengths.max() > max_tokens:
            worst = int(np.argmax(all_lengths)) if all_lengths.max() > max_tokens else -1
            raise ValueError(
                f"every length must be in [1, max_tokens={max_tokens}]; got min "
                f"{all_lengths.min()}, max {all_lengths.max()} (index {worst}); "
                "raise max_tokens or lower max_sample_size"
            )
        self.max_tokens = max_tokens
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.labelled_per_epoch = labelled_per_epoch
        self.labelled_per_class = labelled_per_class

        # rounded-up lengths are >= the true ones, so budgeting with them is safe
        rounded = np.minimum(-(-all_lengths // length_quantum) * length_quantum, max_tokens)
        self._rounded = rounded[: len(self.lengths)]
        self._strata = self._labelled_strata(rounded[len(self.lengths) :])
        epoch_budgets = np.concatenate(
            [self._rounded] + [np.full(count, budget) for budget, _, count in self._strata]
        )
        # m per class: each class's members (dataset indices, shortest first), their budget
        # lengths, q clips per batch, and the length every batch can take them at
        self._class_members: list[np.ndarray] = []
        self._class_lengths: list[np.ndarray] = []
        self.labelled_per_batch = 0
        self.labelled_budget = 0
        if labelled_per_class > 0:
            offset = len(self.lengths)
            per_step = len(np.unique(classes)) * labelled_per_class
            self.labelled_per_batch = q = -(-per_step // num_replicas)
            for c in np.unique(classes):
                members = np.flatnonzero(classes == c)
                members = members[np.argsort(rounded[offset + members], kind="stable")]
                self._class_members.append(members + offset)
                self._class_lengths.append(rounded[offset + members])
                # any batch can take q distinct clips of any class at this length
                shortest_q = int(rounded[offset + members[min(q, len(members)) - 1]])
                self.labelled_budget = max(self.labelled_budget, shortest_q)
            longest = max(self.labelled_budget, int(self._rounded.max()))
            if (q + 1) * longest > max_tokens or (
                max_batch_size is not None and q + 1 > max_batch_size
            ):
                raise ValueError(
                    f"labelled_per_class={labelled_per_class} puts {q} labelled clips in every "
                    f"batch ({len(self._class_members)} classes over {num_replicas} ranks); with "
                    f"one more item of {longest} samples that exceeds max_tokens={max_tokens} "
                    f"(or max_batch_size={max_batch_size}): lower max_sample_size or "
                    "labelled_per_class, or raise max_tokens"
                )
        self._batch_sizes = _greedy_batch_sizes(
            np.sort(epoch_budgets),
            max_tokens,
            max_batch_size,
            self.labelled_per_batch,
            self.labelled_budget,
        )
        self.num_global_batches = len(self._batch_sizes)
        self.epoch = 0
        self.batches_yielded = 0
        self._skip = 0

    def _labelled_strata(self, rounded: np.ndarray) -> list[tuple[int, np.ndarray, int]]:
        """(budget length, member dataset indices, items per epoch) for each labelled stratum.

        Fixed for the whole run, so every epoch has the same multiset of budget lengths.
        """
        if self.labelled_per_epoch == 0:
            return []
        by_length = np.argsort(rounded, kind="stable")
        # strata of >= _STRATUM_SIZE items: a stratum drawing one item still has a choice
        strata = np.array_split(by_length, max(1, len(by_length) // _STRATUM_SIZE))
        sizes = np.array([len(members) for members in strata])
        exact = self.labelled_per_epoch * sizes / sizes.sum()
        counts = np.floor(exact).astype(np.int64)
        # largest remainders get the leftover items; ties in a seeded order, not shortest-first
        tie_order = _rng(self.seed, 0, _STREAM_STRATA).permutation(len(strata))
        by_remainder = tie_order[np.argsort(-(exact - counts)[tie_order], kind="stable")]
        counts[by_remainder[: self.labelled_per_epoch - int(counts.sum())]] += 1
        offset = len(self.lengths)
        return [
            (int(rounded[members].max()), members + offset, int(count))
            for members, count in zip(strata, counts, strict=True)
            if count > 0
        ]

    def __len__(self) -> int:
        return math.ceil(self.num_global_batches / self.num_replicas)

    @property
    def items_per_epoch(self) -> int:
        """Items in one epoch over all ranks, before padding the batch list (m per class:
        the labelled clips of the padded list, which always has whole steps)."""
        steps_labelled = len(self) * self.num_replicas * self.labelled_per_batch
        return len(self.lengths) + self.labelled_per_epoch + steps_labelled

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """Every batch of `epoch` in yield order, over all ranks, before padding."""
        items = [np.arange(len(self.lengths))]
        budgets = [self._rounded]
        draw = _rng(self.seed, epoch, _STREAM_LABELLED_DRAW)
        for budget, members, count in self._strata:
            passes = -(-count // len(members))  # more than one pass = with replacement
            picks = np.concatenate([draw.permutation(members) for _ in range(passes)])
            items.append(picks[:count])
            budgets.append(np.full(count, budget))
        population = np.concatenate(items)  # dataset indices; labelled repeats allowed
        keys = np.concatenate(budgets)
        if self.shuffle:
            shuffle = _rng(self.seed, epoch, _STREAM_ORDER).permutation(len(population))
            population, keys = population[shuffle], keys[shuffle]
        order = population[np.argsort(keys, kind="stable")]
        batches = np.split(order, np.cumsum(self._batch_sizes)[:-1])
        if self.shuffle:
            batch_order = _rng(self.seed, epoch, _STREAM_BATCH_ORDER).permutation(len(batches))
            batches = [batches[i] for i in batch_order]
        if self.labelled_per_class > 0:
            batches = self._with_labelled_per_class(batches, epoch)
        return batches

    def _with_labelled_per_class(self, batches: list[np.ndarray], epoch: int) -> list[np.ndarray]:
        """Pad the list to whole steps, then add q labelled clips to each batch so that each
        step's W batches hold at least m of every class (see the class docstring)."""
        W, q, m = self.num_replicas, self.labelled_per_batch, self.labelled_per_class
        K = len(self._class_members)
        steps = len(self)
        padded = [batches[p % len(batches)] for p in range(steps * W)]
        draw = _rng(self.seed, epoch, _STREAM_CLASS_DRAW)
        rotation = draw.permutation(K)  # who gets the top-up slots, in turn
        extra = q * W - K * m
        uses = [np.zeros(len(members), dtype=np.int64) for members in self._class_members]
        out = []
        for s in range(steps):
            slots = np.concatenate(
                [np.repeat(np.arange(K), m), rotation[(s * extra + np.arange(extra)) % K]]
            )
            slots = draw.permutation(slots)  # which rank gets which class: at random
            for r in range(W):
                batch = padded[s * W + r]
                budget = max(int(self._rounded[batch].max()), self.labelled_budget)
                picks: list[int] = []
                taken: dict[int, list[int]] = {}  # class -> positions picked for this batch
                for c in slots[r * q : (r + 1) * q].tolist():
                    # eligible: the class's clips that fit (a prefix: shortest first)
                    fit = int(np.searchsorted(self._class_lengths[c], budget, side="right"))
                    count = uses[c][:fit].copy()
                    mine = taken.setdefault(c, [])
                    if len(mine) < fit:  # not twice in one batch while there is a choice
                        count[mine] = np.iinfo(np.int64).max
                    least = np.flatnonzero(count == count.min())
                    position = int(least[draw.integers(len(least))])
                    uses[c][position] += 1
                    mine.append(position)
                    picks.append(int(self._class_members[c][position]))
                out.append(np.concatenate([batch, np.asarray(picks, dtype=np.int64)]))
        return out

    def rank_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's `len(self)` batches of `epoch`: global positions rank, rank + R, ..."""
        batches = self.global_batches(epoch)
        padded_count = len(self) * self.num_replicas
        return [
            batches[p % len(batches)] for p in range(self.rank, padded_count, self.num_replicas)
        ]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches_yielded = 0
            self._skip = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_yielded": self.batches_yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, done = _check_state(state, len(self), type(self).__name__)
        self.epoch = epoch
        self.batches_yielded = self._skip = done

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches(self.epoch)
        start, self._skip = self._skip, 0
        self.batches_yielded = start
        for batch in batches[start:]:
            self.batches_yielded += 1
            yield batch.tolist()


def _check_state(state: dict[str, Any], num_batches: int, owner: str) -> tuple[int, int]:
    epoch, done = state.get("epoch"), state.get("batches_yielded")
    if not isinstance(epoch, int) or not isinstance(done, int) or not 0 <= done <= num_batches:
        raise ValueError(
            f"{owner}: bad state {state!r}; expected epoch and batches_yielded in "
            f"[0, {num_batches}] (was the checkpoint made with other data or ranks?)"
        )
    return epoch, done


def _set_dataset_epoch(dataset: Dataset[AudioItem], epoch: int) -> None:
    for part in getattr(dataset, "datasets", [dataset]):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


class ResumableLoader:
    """Runs the epochs of a `LengthBucketBatchSampler` and can resume mid-epoch.

    Each pass over the loader (`iter`) is one epoch: a pass that ran to the end, or was cut
    short (`limit_train_batches`), is followed by the next epoch. `state_dict()` counts the
    batches handed to the caller, not those prefetched by workers; Lightning saves it in
    its checkpoints (any train loader with `state_dict`/`load_state_dict` is saved by the
    fit loop) and restores it before the first pass, which then yields exactly the
    batches an uninterrupted run had left in that epoch.

    It wraps a DataLoader rather than subclassing one so that Lightning does not replace
    the batch sampler with a DistributedSampler: sharding over ranks is the sampler's job.

    crop_to_shortest: crop every batch to its shortest item (no padding), offsets drawn
        from (seed, epoch, global batch position).
    repeat_epoch: every pass replays `initial_epoch` from the start (validation).
    backend: what loads the planned batches. "torch": a DataLoader with `num_workers`
        worker processes. "fairseq2": a fairseq2 DataPipeline decoding `max(1, num_workers)`
        batches at once on threads, `prefetch` batches ahead (see `fairseq2_pipeline`).
        Both yield identical batches; the position (and so a checkpoint) is the same.
    """

    def __init__(
        self,
        dataset: Dataset[AudioItem],
        batch_sampler: LengthBucketBatchSampler,
        *,
        num_workers: int = 0,
        crop_to_shortest: bool = False,
        seed: int = 1,
        initial_epoch: int = 0,
        repeat_epoch: bool = False,
        name: str = "train",
        backend: Backend = "torch",
        prefetch: int = 2,
    ) -> None:
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.loader: Iterable[AudioBatch]
        if backend == "fairseq2":
            from emotion_ssl.data.fairseq2_pipeline import Fairseq2BatchSource

            self.loader = Fairseq2BatchSource(
                dataset, batch_sampler, num_parallel_calls=max(1, num_workers), prefetch=prefetch
            )
        elif backend == "torch":
            self.loader = DataLoader(
                dataset,
                batch_sampler=batch_sampler,
                num_workers=num_workers,
                collate_fn=collate_audio,
                # fresh workers each pass copy the dataset with its new epoch
                persistent_workers=False,
                prefetch_factor=prefetch if num_workers > 0 and prefetch > 0 else None,
            )
        else:
            raise ValueError(f"backend must be 'torch' or 'fairseq2', got {backend!r}")
        self.backend = backend
        self.crop_to_shortest = crop_to_shortest
        self.seed = seed
        self.repeat_epoch = repeat_epoch
        self.name = name
        self.epoch = initial_epoch
        self.batches_yielded = 0
        self._resume_pending = False

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def state_dict(self) -> dict[str, int]:
        """Position in the run; the shape keys let a resume detect other data or ranks."""
        return {
            "epoch": self.epoch,
            "batches_yielded": self.batches_yielded,
            "num_replicas": self.batch_sampler.num_replicas,
            "num_global_batches": self.batch_sampler.num_global_batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = self.batch_sampler
        saved_shape = (state.get("num_replicas"), state.get("num_global_batches"))
        if saved_shape != (sampler.num_replicas, sampler.num_global_batches):
            epoch, _ = _check_state(state, int(1e18), type(self).__name__)
            logger.warning(
                "%s: checkpoint was made with (ranks, batches per epoch) = %s, now %s; the "
                "rest of epoch %d cannot be replayed exactly, continuing with epoch %d",
                self.name,
                saved_shape,
                (sampler.num_replicas, sampler.num_global_batches),
                epoch,
                epoch + 1,
            )
            self.epoch, self.batches_yielded = epoch + 1, 0
        else:
            self.epoch, self.batches_yielded = _check_state(state, len(self), type(self).__name__)
        self._resume_pending = True

    def __iter__(self) -> Iterator[AudioBatch]:
        # a generator: nothing moves until the first batch is requested, so an iter() that
        # only probes the loader (Lightning does) neither starts nor ends an epoch
        return self._run_epoch()

    def _start_epoch(self) -> None:
        if self.repeat_epoch:
            self.batches_yielded = 0
        elif self.batches_yielded >= len(self) or (
            self.batches_yielded > 0 and not self._resume_pending
        ):
            self.epoch += 1
            self.batches_yielded = 0
        self._resume_pending = False
        self.batch_sampler.load_state_dict(
            {"epoch": self.epoch, "batches_yielded": self.batches_yielded}
        )
        _set_dataset_epoch(self.dataset, self.epoch)

    def _run_epoch(self) -> Iterator[AudioBatch]:
        self._start_epoch()
        sampler = self.batch_sampler
        start = self.batches_yielded
        items = valid = total = 0
        for batch in self.loader:
            if self.crop_to_shortest:
                position = sampler.rank + self.batches_yielded * sampler.num_replicas
                rng = _rng(self.seed, self.epoch, _STREAM_BATCH_CROP, position)
                batch = crop_batch_to_shortest(batch, rng)
            self.batches_yielded += 1
            items += batch.batch_size
            valid += batch.num_samples
            total += batch.waveforms.numel()
            if self.batches_yielded == len(self):
                # logged before the last yield: Lightning never asks past the last batch
                logger.info(
                    "%s epoch %d (rank %d of %d): %d batches, %d items, %.1f min of audio, "
                    "padding %.2f%% of samples",
                    self.name,
                    self.epoch,
                    sampler.rank,
                    sampler.num_replicas,
                    self.batches_yielded - start,
                    items,
                    valid / TARGET_RATE / 60,
                    100.0 * (1.0 - valid / max(total, 1)),
                )
            yield batch


class PretrainDataModule(L.LightningDataModule):
    """Pretraining batches from JSONL manifests (see `emotion_ssl.data.manifest`).

    Ranks and world size come from `self.trainer`; the loaders shard themselves, so the
    Trainer's `use_distributed_sampler` does not matter. The argument descriptions below are
    the `--data.*` help of `emotion-ssl pretrain --help`.

    Args:
        train_manifest: JSONL manifest of the unlabelled stream; its labels, if any, are
            ignored.
        valid_manifest: JSONL manifest of validation utterances (unlabelled, fixed crops,
            padded batches); none by default.
        labelled_manifest: JSONL manifest whose labelled entries feed the category term.
        labelled_fraction: share of each epoch's items drawn (per epoch, with replacement
            when the pool is too small) from the labelled manifest, carrying their class.
        labelled_per_class: m > 0 instead of labelled_fraction: every global batch (the
            batches of all ranks at one step) holds at least m labelled clips of each class
            of the labelled manifest (m-per-class sampling, for the category term's
            positives; budget rules in `LengthBucketBatchSampler`).
        label_names: class names in index order; default: the sorted labels found in the
            labelled manifest.
        max_tokens: padded 16 kHz samples per batch and rank (batch size x longest item).
        max_batch_size: optional cap on utterances per batch.
        max_sample_size: crop longer clips to this many 16 kHz samples.
        min_sample_size: drop clips shorter than this many 16 kHz samples.
        batching: "bucket" pads length-sorted batches; "crop_to_shortest" (reference
            emotion2vec) crops every batch to its shortest item.
        num_workers: parallel batch loaders: worker processes ("torch") or fairseq2 threads.
        backend: "fairseq2" (DataPipeline, parallel map on threads + prefetch; measured
            faster, benchmarks/RESULTS.md) or "torch" (DataLoader + worker processes);
            identical batches, see `ResumableLoader`.
        decoder: "fairseq2" (fairseq2's native AudioDecoder) or "soundfile"; identical
            samples. When fairseq2's native library cannot load, both fall back to "torch" /
            "soundfile" with a warning (the batches do not change).
        prefetch: batches loaded ahead (torch: per worker, as DataLoader's prefetch_factor).
        seed: seeds every crop, draw and shuffle (with the epoch), independent of the
            worker count.
    """

    def __init__(
        self,
        train_manifest: str,
        valid_manifest: str | None = None,
        labelled_manifest: str | None = None,
        labelled_fraction: float = 0.0,
        labelled_per_class: int = 0,
        label_names: list[str] | None = None,
        max_tokens: int = 1_400_000,
        max_batch_size: int | None = None,
        max_sample_size: int = 320_000,
        min_sample_size: int = 8_000,
        batching: Literal["bucket", "crop_to_shortest"] = "bucket",
        num_workers: int = 0,
        backend: Backend = "fairseq2",
        decoder: Decoder = "fairseq2",
        prefetch: int = 2,
        seed: int = 1,
    ) -> None:
        super().__init__()
        if not 0.0 <= labelled_fraction < 1.0:
            raise ValueError(f"labelled_fraction must be in [0, 1), got {labelled_fraction}")
        if labelled_fraction > 0 and labelled_manifest is None:
            raise ValueError(f"labelled_fraction={labelled_fraction} needs a labelled_manifest")
        if labelled_per_class < 0 or (
            labelled_per_class > 0 and (labelled_manifest is None or labelled_fraction > 0)
        ):
            raise ValueError(
                f"labelled_per_class={labelled_per_class} needs a labelled_manifest and "
                f"labelled_fraction=0 (got {labelled_fraction}): it sets the labelled share"
            )
        if max_sample_size > max_tokens:
            raise ValueError(
                f"max_tokens ({max_tokens}) must be >= max_sample_size ({max_sample_size}): "
                "a batch must fit at least one full-length utterance"
            )
        if batching not in ("bucket", "crop_to_shortest"):
            raise ValueError(f"batching must be 'bucket' or 'crop_to_shortest', got {batching!r}")
        if backend not in ("torch", "fairseq2") or decoder not in ("soundfile", "fairseq2"):
            raise ValueError(
                f"backend must be 'torch' or 'fairseq2' and decoder 'soundfile' or 'fairseq2', "
                f"got {backend!r} and {decoder!r}"
            )
        self.save_hyperparameters()
        self.train_manifest = train_manifest
        self.valid_manifest = valid_manifest
        self.labelled_manifest = labelled_manifest
        self.labelled_fraction = labelled_fraction
        self.labelled_per_class = labelled_per_class
        self.label_names = label_names
        self.max_tokens = max_tokens
        self.max_batch_size = max_batch_size
        self.max_sample_size = max_sample_size
        self.min_sample_size = min_sample_size
        self.batching = batching
        self.num_workers = num_workers
        if "fairseq2" in (backend, decoder) and not _fairseq2_loads():
            backend, decoder = "torch", "soundfile"
        self.backend: Backend = backend
        self.decoder: Decoder = decoder
        self.prefetch = prefetch
        self.seed = seed
        self.train_dataset: PretrainDataset | None = None
        self.labelled_dataset: PretrainDataset | None = None
        self.valid_dataset: PretrainDataset | None = None

    def _dataset(
        self, manifest: str, entries: list[ManifestEntry], label_names: list[str] | None
    ) -> PretrainDataset:
        read_audio = None
        if self.decoder == "fairseq2":
            from emotion_ssl.data.fairseq2_pipeline import Fairseq2AudioDecoder

            read_audio = Fairseq2AudioDecoder()
        return PretrainDataset(
            entries,
            label_names,
            max_sample_size=self.max_sample_size,
            min_sample_size=self.min_sample_size,
            seed=self.seed,
            name=manifest,
            read_audio=read_audio,
        )

    def setup(self, stage: str | None = None) -> None:
        """Read the manifests once (every rank reads them; they are small)."""
        if self.train_dataset is not None:
            return
        # the unlabelled stream: drop its labels so that nothing downstream can see them
        entries = [replace(e, label=None) for e in read_manifest(self.train_manifest)]
        self.train_dataset = self._dataset(self.train_manifest, entries, None)
        if (
            self.labelled_manifest is not None
            and self.labelled_fraction == 0.0
            and self.labelled_per_class == 0
        ):
            logger.warning(
                "labelled_manifest %s unused: labelled_fraction and labelled_per_class are 0",
                self.labelled_manifest,
            )
        elif self.labelled_manifest is not None:
            every = read_manifest(self.labelled_manifest)
            entries = [e for e in every if e.label is not None]
            if len(entries) < len(every):
                logger.warning(
                    "%s: %d of %d entries have no label and are left out of the labelled pool",
                    self.labelled_manifest,
                    len(every) - len(entries),
                    len(every),
                )
            if self.label_names is None:
                self.label_names = sorted({e.label for e in entries if e.label is not None})
                logger.info("label_names from %s: %s", self.labelled_manifest, self.label_names)
            self.labelled_dataset = self._dataset(self.labelled_manifest, entries, self.label_names)
            if len(self.labelled_dataset) == 0:
                raise ValueError(f"{self.labelled_manifest}: no usable labelled entries")
        if self.valid_manifest is not None:
            entries = read_manifest(self.valid_manifest)
            self.valid_dataset = self._dataset(self.valid_manifest, entries, None)

    def _world(self) -> tuple[int, int]:
        """(world size, global rank) from the trainer, (1, 0) without one."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def labelled_per_epoch(self) -> int:
        """Labelled items per epoch: n with n / (n + unlabelled) = labelled_fraction."""
        if self.labelled_dataset is None or self.train_dataset is None:
            return 0
        fraction = self.labelled_fraction
        return round(fraction / (1.0 - fraction) * len(self.train_dataset))

    def train_dataloader(self) -> ResumableLoader:
        self.setup("fit")
        assert self.train_dataset is not None
        world_size, rank = self._world()
        dataset: Dataset[AudioItem] = self.train_dataset
        labelled_lengths = labelled_classes = None
        if self.labelled_dataset is not None:
            dataset = ConcatDataset([self.train_dataset, self.labelled_dataset])
            labelled_lengths = self.labelled_dataset.lengths
            labelled_classes = self.labelled_dataset.labels
        sampler = LengthBucketBatchSampler(
            self.train_dataset.lengths,
            self.max_tokens,
            max_batch_size=self.max_batch_size,
            shuffle=True,
            seed=self.seed,
            num_replicas=world_size,
            rank=rank,
            labelled_lengths=labelled_lengths,
            labelled_per_epoch=self.labelled_per_epoch(),
            labelled_classes=labelled_classes,
            labelled_per_class=self.labelled_per_class,
        )
        # a loader rebuilt mid-run (reload_dataloaders_every_n_epochs) continues the epochs
        initial_epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return ResumableLoader(
            dataset,
            sampler,
            num_workers=self.num_workers,
            crop_to_shortest=self.batching == "crop_to_shortest",
            seed=self.seed,
            initial_epoch=initial_epoch,
            name="train",
            backend=self.backend,
            prefetch=self.prefetch,
        )

    def val_dataloader(self) -> ResumableLoader | list[Any]:
        self.setup("validate")
        if self.valid_dataset is None:
            return []
        world_size, rank = self._world()
        sampler = LengthBucketBatchSampler(
            self.valid_dataset.lengths,
            self.max_tokens,
            max_batch_size=self.max_batch_size,
            shuffle=False,
            seed=self.seed,
            num_replicas=world_size,
            rank=rank,
        )
        return ResumableLoader(
            self.valid_dataset,
            sampler,
            num_workers=self.num_workers,
            seed=self.seed,
            repeat_epoch=True,
            name="valid",
            backend=self.backend,
            prefetch=self.prefetch,
        )
