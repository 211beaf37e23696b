"""AudioBatch, collate_audio and crop_batch_to_shortest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emotion_ssl.data import AudioBatch, AudioItem, collate_audio, crop_batch_to_shortest


def _items() -> list[AudioItem]:
    return [
        AudioItem("a", np.array([1, 2, 3], dtype=np.float32), 2),
        AudioItem("b", torch.tensor([4.0, 5.0, 6.0, 7.0, 8.0]), -1),
        AudioItem("c", np.array([9, 10], dtype=np.float32)),
    ]


def test_collate_pads_at_the_end_and_keeps_order() -> None:
    batch = collate_audio(_items())
    expected = torch.tensor(
        [[1, 2, 3, 0, 0], [4, 5, 6, 7, 8], [9, 10, 0, 0, 0]], dtype=torch.float32
    )
    torch.testing.assert_close(batch.waveforms, expected, rtol=0, atol=0)
    assert batch.lengths.tolist() == [3, 5, 2] and batch.lengths.dtype == torch.long
    assert batch.labels.tolist() == [2, -1, -1] and batch.labels.dtype == torch.long
    assert batch.keys == ["a", "b", "c"]
    assert batch.batch_size == 3
    assert batch.num_samples == 10
    assert batch.padded_fraction == pytest.approx(1 - 10 / 15)


def test_to_moves_every_tensor_and_keeps_keys() -> None:
    batch = collate_audio(_items())
    moved = batch.to("meta")
    assert {t.device.type for t in (moved.waveforms, moved.lengths, moved.labels)} == {"meta"}
    assert moved.keys == batch.keys and moved.keys is not batch.keys
    assert batch.waveforms.device.type == "cpu"  # the original is untouched


def test_collate_rejects_empty_and_malformed_items() -> None:
    with pytest.raises(ValueError, match="empty list"):
        collate_audio([])
    with pytest.raises(ValueError, match="item 'x'.*got shape \\(2, 3\\)"):
        collate_audio([AudioItem("x", np.zeros((2, 3), dtype=np.float32))])
    with pytest.raises(ValueError, match="item 'y'"):
        collate_audio([AudioItem("y", np.zeros(0, dtype=np.float32))])


def test_audio_batch_checks_shapes() -> None:
    with pytest.raises(ValueError, match="must both be \\(2,\\)"):
        AudioBatch(torch.zeros(2, 4), torch.zeros(3, dtype=torch.long), torch.zeros(2), ["a", "b"])
    with pytest.raises(ValueError, match="1 keys for a batch of 2"):
        AudioBatch(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), torch.zeros(2), ["a"])


def test_crop_to_shortest_leaves_no_padding_and_takes_contiguous_segments() -> None:
    rng = np.random.default_rng(0)
    items = [
        AudioItem(f"u{i}", rng.standard_normal(n).astype(np.float32), i)
        for i, n in enumerate([50, 20, 80])
    ]
    batch = collate_audio(items)
    offsets = set()
    for seed in range(8):
        cropped = crop_batch_to_shortest(batch, np.random.default_rng(seed))
        assert cropped.waveforms.shape == (3, 20)
        assert cropped.lengths.tolist() == [20, 20, 20] and cropped.padded_fraction == 0.0
        assert cropped.labels.tolist() == [0, 1, 2] and cropped.keys == ["u0", "u1", "u2"]
        for row, item in zip(cropped.waveforms.numpy(), items, strict=True):
            full = np.asarray(item.waveform)
            matches = [o for o in range(len(full) - 19) if np.array_equal(full[o : o + 20], row)]
            assert len(matches) == 1  # a contiguous stretch of the original, never padding
            offsets.add((item.key, matches[0]))
    assert len({o for k, o in offsets if k == "u2"}) > 1  # offsets are random
    assert {o for k, o in offsets if k == "u1"} == {0}  # the shortest row is kept whole
    again = crop_batch_to_shortest(batch, np.random.default_rng(3))
    torch.testing.assert_close(
        again.waveforms, crop_batch_to_shortest(batch, np.random.default_rng(3)).waveforms
    )
