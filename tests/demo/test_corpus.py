"""The built-in emotion corpus: exact filters, byte-identical files per seed, speaker-disjoint
splits, sane audio, and categories that mean loudness or mean pitch alone cannot tell apart on
held-out speakers while spectral statistics can."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from emotion_ssl.data import read_manifest
from emotion_ssl.demo.corpus import (
    CORPUS,
    EMOTIONS,
    CorpusSpec,
    _linear_recurrence,
    assign_speakers,
    clip_rng,
    make_speaker,
    render_utterance,
    resonator,
    synthesize_utterance,
    write_emotion_corpus,
)

SMALL = CorpusSpec(
    num_speakers=6, utterances_per_speaker_per_emotion=2, min_seconds=0.5, max_seconds=1.0, seed=5
)
SMALL_SPLIT = (2, 2)  # training, held-out speakers; the other 2 are unlabelled


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """60 clips of 0.5-1.0 s written by two worker processes. Read-only."""
    return write_emotion_corpus(tmp_path_factory.mktemp("emotion"), SMALL, SMALL_SPLIT, 2)


def _wav_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "wav").glob("*.wav"))}


# ----------------------------------------------------------------------------- filters


def test_recurrence_matches_a_sample_by_sample_loop() -> None:
    rng = np.random.default_rng(0)
    num_samples = 1000  # not a multiple of the block size
    x = rng.normal(size=num_samples) + 1j * rng.normal(size=num_samples)
    a = rng.uniform(0.6, 0.999, num_samples) * np.exp(1j * rng.uniform(0, np.pi, num_samples))
    expected = np.empty(num_samples, dtype=np.complex128)
    state = 0j
    for n in range(num_samples):
        state = a[n] * state + x[n]
        expected[n] = state
    np.testing.assert_allclose(_linear_recurrence(x, a), expected, rtol=1e-9, atol=1e-9)


def test_resonator_is_klatts_difference_equation() -> None:
    fs, freq, bandwidth = 16000, 700.0, 90.0
    x = np.random.default_rng(1).normal(size=3000)
    r, theta = np.exp(-np.pi * bandwidth / fs), 2 * np.pi * freq / fs
    b, c = 2 * r * np.cos(theta), -(r**2)
    gain = 1 - b - c
    expected = np.zeros_like(x)
    y1 = y2 = 0.0
    for n in range(len(x)):
        expected[n] = gain * x[n] + b * y1 + c * y2
        y1, y2 = expected[n], y1
    np.testing.assert_allclose(resonator(x, freq, bandwidth, fs), expected, rtol=1e-8, atol=1e-10)
    # its impulse response rings at the formant, with unit gain at DC
    impulse = np.zeros(4096)
    impulse[0] = 1.0
    spectrum = np.abs(np.fft.rfft(resonator(impulse, freq, bandwidth, fs)))
    assert np.fft.rfftfreq(4096, 1 / fs)[spectrum.argmax()] == pytest.approx(freq, abs=10)
    assert spectrum[0] == pytest.approx(1.0, rel=1e-6)
    # the time-varying path with constant tracks is the same filter
    tracks = resonator(x, np.full(len(x), freq), np.full(len(x), bandwidth), fs)
    np.testing.assert_allclose(tracks, expected, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------- files


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    spec = CorpusSpec(
        num_speakers=3, utterances_per_speaker_per_emotion=1, min_seconds=0.4, max_seconds=0.6
    )
    first = write_emotion_corpus(tmp_path / "a", spec, (1, 1), num_workers=1)
    again = write_emotion_corpus(tmp_path / "b", spec, (1, 1), num_workers=2)
    other = replace(spec, seed=1)
    write_emotion_corpus(tmp_path / "c", other, (1, 1), num_workers=1)
    assert _wav_bytes(tmp_path / "a") == _wav_bytes(tmp_path / "b")
    for split in ("unlabelled", "train", "test"):
        assert first[split].read_bytes() == again[split].read_bytes()
    changed = _wav_bytes(tmp_path / "c")
    assert changed.keys() == _wav_bytes(tmp_path / "a").keys()  # same names, other audio
    assert all(changed[k] != v for k, v in _wav_bytes(tmp_path / "a").items())


def test_rerun_rewrites_nothing_and_repairs_a_missing_file(small_corpus: dict[str, Path]) -> None:
    root = small_corpus["train"].parent
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    audio = _wav_bytes(root)
    assert write_emotion_corpus(root, SMALL, SMALL_SPLIT, 1) == small_corpus
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before

    victim = sorted((root / "wav").glob("*.wav"))[7]
    victim.unlink()
    write_emotion_corpus(root, SMALL, SMALL_SPLIT, 1)
    assert _wav_bytes(root) == audio


def test_manifests_split_by_speaker_with_every_count(small_corpus: dict[str, Path]) -> None:
    assert sorted(small_corpus) == ["test", "train", "unlabelled"]
    splits = {name: read_manifest(path) for name, path in small_corpus.items()}
    speakers = {name: {e.speaker for e in entries} for name, entries in splits.items()}
    assert [len(speakers[s]) for s in ("unlabelled", "train", "test")] == [2, 2, 2]
    assert set.union(*speakers.values()) == {make_speaker(i, SMALL.seed).name for i in range(6)}
    assert not (speakers["train"] & speakers["test"] or speakers["unlabelled"] & speakers["test"])
    assert not speakers["train"] & speakers["unlabelled"]
    assert speakers == {
        name: {make_speaker(i, SMALL.seed).name for i in indices}
        for name, indices in assign_speakers(6, SMALL_SPLIT, SMALL.seed).items()
    }
    per_clip = SMALL.utterances_per_speaker_per_emotion
    for name, entries in splits.items():
        assert len(entries) == len(speakers[name]) * len(EMOTIONS) * per_clip
        assert all(e.corpus == CORPUS and e.extra == {"split": name} for e in entries)
        assert all(Path(e.path).is_file() and e.sample_rate == 16000 for e in entries)
        if name == "unlabelled":
            assert all(e.label is None for e in entries)
            assert '"label"' not in small_corpus[name].read_text()
        else:
            counts = Counter((e.speaker, e.label) for e in entries)
            assert counts == {(s, emo): per_clip for s in speakers[name] for emo in EMOTIONS}
    # relative paths keep the corpus relocatable; names do not give the category away
    text = small_corpus["train"].read_text()
    assert '"path": "wav/spk' in text and not any(f"_{emo}" in text for emo in EMOTIONS)


def test_audio_is_sane(small_corpus: dict[str, Path]) -> None:
    for path in small_corpus.values():
        for entry in read_manifest(path):
            audio, rate = sf.read(entry.path, dtype="float32")
            info = sf.info(entry.path)
            assert (info.subtype, rate, audio.ndim) == ("PCM_16", 16000, 1)
            assert entry.num_samples == len(audio)
            assert SMALL.min_seconds <= entry.duration <= SMALL.max_seconds + 1e-3
            assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
            frames = audio[: len(audio) // 320 * 320].reshape(-1, 320)  # (T, 320): 20 ms frames
            level_db = 10 * np.log10((frames.astype(np.float64) ** 2).mean(axis=1) + 1e-12)
            # speech well above the -70 dBFS noise floor, with silences and pauses around it
            assert level_db.max() > -50 and (level_db > level_db.max() - 20).mean() > 0.25
            assert level_db.min() < -55


def test_utterances_follow_their_arguments() -> None:
    speaker = make_speaker(3, seed=0)
    waveform = synthesize_utterance(speaker, "ang", np.random.default_rng(0), 16000, 1.25)
    assert waveform.dtype == np.float32 and waveform.shape == (20000,)
    again = synthesize_utterance(speaker, "ang", np.random.default_rng(0), 16000, 1.25)
    np.testing.assert_array_equal(waveform, again)
    low = render_utterance(make_speaker(0), "neu", clip_rng(0, 0, "neu", 0), seconds=2.0)
    high = render_utterance(make_speaker(1), "neu", clip_rng(0, 1, "neu", 0), seconds=2.0)
    assert np.median(low.f0_hz[low.f0_hz > 0]) < np.median(high.f0_hz[high.f0_hz > 0])
    assert (low.f0_hz > 0).mean() > 0.3  # mostly voiced
    short = synthesize_utterance(speaker, "sad", np.random.default_rng(1), 8000, 0.3)
    assert short.shape == (2400,) and np.isfinite(short).all() and np.abs(short).max() <= 1.0


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    speaker = make_speaker(0)
    unused = tmp_path / "unused"
    with pytest.raises(ValueError, match="unknown emotion 'bored'"):
        synthesize_utterance(speaker, "bored", np.random.default_rng(0))
    with pytest.raises(ValueError, match="labelled_speakers=\\(5, 2\\)"):
        write_emotion_corpus(unused, CorpusSpec(num_speakers=6), (5, 2))
    with pytest.raises(ValueError, match="emotions"):
        write_emotion_corpus(unused, CorpusSpec(emotions=("neu", "bored")))
    with pytest.raises(ValueError, match="min_seconds"):
        write_emotion_corpus(unused, CorpusSpec(min_seconds=3.0, max_seconds=2.0))
    assert not unused.exists()


# ----------------------------------------------------------------------------- separability


def _mel_filterbank(sample_rate: int, n_fft: int = 512, n_mels: int = 40) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, 60 Hz to 0.95 * Nyquist on the mel scale."""

    def mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges_mel = np.linspace(mel(np.array(60.0)), mel(np.array(0.475 * sample_rate)), n_mels + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.maximum(
        0.0, np.minimum((freqs - low) / (centre - low), (high - freqs) / (high - centre))
    )


def log_mel_statistics(waveform: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """(120,) per-utterance mean, std and mean |delta| of 40 log-mel bands (25 ms / 10 ms)."""
    frames = np.lib.stride_tricks.sliding_window_view(waveform.astype(np.float64), 400)[::160]
    power = np.abs(np.fft.rfft(frames * np.hanning(400), 512)) ** 2  # (T, 257)
    log_mel = np.log(power @ _mel_filterbank(sample_rate).T + 1e-10)  # (T, 40)
    delta = np.abs(np.diff(log_mel, axis=0)).mean(axis=0)
    return np.concatenate([log_mel.mean(axis=0), log_mel.std(axis=0), delta])


def probe_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    """Multinomial logistic regression (L-BFGS, small L2) on standardised features.

    train_x: (N, D), train_y: (N,) int; returns the accuracy on (test_x, test_y). A linear
    softmax on one feature can still give every class its own interval of that feature.
    """
    train_x, test_x = train_x.astype(np.float64), test_x.astype(np.float64)
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-8
    x = torch.from_numpy((train_x - mean) / std)  # (N, D) float64
    y = torch.from_numpy(train_y)
    linear = torch.nn.Linear(x.shape[1], int(train_y.max()) + 1, dtype=torch.float64)
    torch.nn.init.zeros_(linear.weight)  # a convex problem: start from zero, deterministic
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), y) + 1e-3 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = linear(torch.from_numpy((test_x - mean) / std)).argmax(dim=1).numpy()
    return float((predicted == test_y).mean())


def test_categories_need_more_than_mean_loudness_or_mean_pitch() -> None:
    """20 speakers x 5 emotions x 3 clips of 1-1.8 s; probes trained on 12 speakers, tested on
    8 others. (Seeds 0-3 give full-feature accuracies 0.64-0.71, single statistics <= 0.36.)"""
    seed, num_speakers, clips = 0, 20, 3
    split = assign_speakers(num_speakers, (12, 8), seed)
    features, loudness, pitch, labels, held_out = [], [], [], [], []
    cpu_start, audio_seconds = time.process_time(), 0.0
    for s in range(num_speakers):
        speaker = make_speaker(s, seed)
        for label, emotion in enumerate(EMOTIONS):
            for u in range(clips):
                rng = clip_rng(seed, s, emotion, u)
                seconds = rng.uniform(1.0, 1.8)
                clip = render_utterance(speaker, emotion, rng, 16000, seconds)
                audio_seconds += seconds
                waveform = clip.waveform.astype(np.float64)
                features.append(log_mel_statistics(waveform))
                loudness.append([10 * np.log10(np.mean(waveform**2))])  # plain RMS in dB
                pitch.append([np.log2(clip.f0_hz[clip.f0_hz > 0]).mean()])  # the true f0
                labels.append(label)
                held_out.append(s in split["test"])
    assert len(split["unlabelled"]) == 0
    cpu_per_second = (time.process_time() - cpu_start) / audio_seconds
    y, test = np.array(labels), np.array(held_out)

    def accuracy(x: npt.ArrayLike) -> float:
        data = np.asarray(x, dtype=np.float64)
        return probe_accuracy(data[~test], y[~test], data[test], y[test])

    scores = {
        "mean loudness (RMS dB)": accuracy(loudness),
        "mean pitch (true log f0)": accuracy(pitch),
        "loudness + pitch": accuracy(np.hstack([loudness, pitch])),
        "log-mel mean/std/delta (120)": accuracy(features),
    }
    print(
        f"\nlinear probes, {len(y) - test.sum()} clips of 12 speakers -> {test.sum()} clips of 8 "
        f"held-out speakers, chance {1 / len(EMOTIONS):.2f} (synthesis + features: "
        f"{cpu_per_second:.3f} s CPU per second of audio)"
    )
    for name, score in scores.items():
        print(f"  {name:30s} {score:.3f}")
    full = scores["log-mel mean/std/delta (120)"]
    assert full >= 0.55  # chance is 0.2
    for name in ("mean loudness (RMS dB)", "mean pitch (true log f0)", "loudness + pitch"):
        assert scores[name] <= 0.42 and scores[name] <= full - 0.2, (name, scores)
