"""The built-in corpus: seeded emotion-like speech from a source-filter voice (numpy, no downloads).

The project's one speech generator: `write_emotion_corpus` (the demo's speaker-split corpus)
and `write_synthetic_corpus` (a flat labelled-or-not manifest for tests) both render clips with
`render_utterance`.

Each utterance is synthesised the classic way:

    glottal flow pulses (Rosenberg shape; jitter, shimmer, open quotient)
      -> derivative (lip radiation) -> spectral-tilt low-pass      + aspiration noise (breathiness)
      -> 5 cascaded formant resonators following vowel targets with transitions
      + consonant noise bursts between syllables, breath noise in pauses, a -70 dBFS noise floor

Speakers differ in median pitch (85-265 Hz), pitch range, vocal-tract length (formants scaled by
0.92-1.22), speaking rate, recording level and voice quality. Emotions shift what emotions shift
in real speech (pitch level, range and final contour, speaking rate, loudness, open quotient and
spectral tilt, jitter/shimmer, breathiness, F1, articulation, pauses, tremor), scaled per speaker
and per utterance. Because speakers spread pitch over ~20 semitones and recording levels over
16 dB, neither mean pitch nor mean loudness alone tells the categories apart on unseen speakers;
spectral statistics do (`tests/demo/test_corpus.py` measures it).

    from emotion_ssl.demo.corpus import CorpusSpec, write_emotion_corpus
    paths = write_emotion_corpus("demo_out/corpus", CorpusSpec(seed=0))
    # {"unlabelled": .../unlabelled.jsonl, "train": .../train.jsonl, "test": .../test.jsonl}

Every clip depends only on (seed, speaker, emotion, utterance index), so the same seed writes
byte-identical WAV files whatever the number of worker processes (on one platform and numpy
version: transcendental functions may differ in the last bit elsewhere). About 50 ms of CPU per
2.75 s clip: the default 720 clips take ~20 s on two cores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from emotion_ssl.data.manifest import (
    ManifestEntry,
    entry_from_audio_file,
    write_manifest,
    write_text_atomically,
)
from emotion_ssl.utils.outputs import atomic_write

EMOTIONS: tuple[str, ...] = ("neu", "hap", "ang", "sad", "fea")
"""Category labels (the project's three-letter codes): neutral, happy, angry, sad, fearful."""

CORPUS = "synthetic-emotion"
"""The `corpus` field of every manifest entry."""

GENERATOR_VERSION = 1
"""Bump when the synthesis changes, so existing corpora on disk are regenerated."""

SPLITS = ("unlabelled", "train", "test")

VOWEL_FORMANTS: dict[str, tuple[float, float, float, float, float]] = {
    # F1..F5 in Hz for an adult male vocal tract (classic averages, rounded)
    "a": (730.0, 1090.0, 2440.0, 3400.0, 4400.0),
    "e": (530.0, 1840.0, 2480.0, 3450.0, 4450.0),
    "i": (280.0, 2250.0, 2950.0, 3600.0, 4500.0),
    "o": (570.0, 840.0, 2410.0, 3350.0, 4400.0),
    "u": (310.0, 870.0, 2250.0, 3300.0, 4350.0),
}
INTRINSIC_LEVEL_DB = {"a": 1.5, "e": 0.0, "i": -1.5, "o": 1.0, "u": -1.5}
"""Open vowels are a little louder than close ones."""
SCHWA = np.array([500.0, 1500.0, 2500.0, 3450.0, 4450.0])
"""The neutral vocal tract that reduced (sad) articulation drifts towards."""
FORMANT_BANDWIDTHS = np.array([70.0, 90.0, 130.0, 180.0, 250.0])

_STREAM_SPEAKER = 1  # independent random streams: speakers, clips, splits, file-name order
_STREAM_CLIP = 2
_STREAM_SPLIT = 3
_STREAM_KEYS = 4
_BLOCK = 128  # samples per block of the parallel recurrence (see _linear_recurrence)


@dataclass(frozen=True)
class SpeakerProfile:
    """One synthetic speaker's habitual voice; emotions are applied on top of it."""

    name: str
    f0_hz: float
    """Median speaking pitch."""
    pitch_range_st: float
    """Spread of syllable pitch accents, in semitones."""
    formant_scale: float
    """Formant multiplier, the inverse of relative vocal-tract length (1.0: adult male)."""
    syllable_rate: float
    """Syllables per second in neutral speech."""
    level_db: float
    """Recording level relative to -26 dBFS (microphone gain and distance)."""
    open_quotient: float
    """Fraction of each glottal period the glottis is open (low: pressed, high: breathy)."""
    tilt: float
    """Pole of the source's spectral-tilt low-pass, 0..1 (higher: darker voice)."""
    breathiness: float
    """Aspiration noise level relative to the voiced excitation."""
    jitter: float
    """Relative standard deviation of consecutive glottal periods."""
    shimmer: float
    """Relative standard deviation of consecutive glottal pulse amplitudes."""
    expressiveness: float
    """How strongly this speaker shows emotion (scales every emotion offset)."""


@dataclass(frozen=True)
class EmotionStyle:
    """How one category moves a speaker's voice; every offset is scaled by the speaker's
    expressiveness and a per-utterance intensity before use."""

    pitch_shift_st: float
    """Mean pitch offset in semitones."""
    pitch_range: float
    """Multiplier on the speaker's pitch range."""
    rate: float
    """Multiplier on the speaking rate."""
    loudness_db: float
    """Level offset."""
    open_quotient: float
    """Offset of the open quotient (negative: tense, pressed voice)."""
    tilt: float
    """Offset of the tilt pole (negative: more high-frequency energy)."""
    breathiness: float
    """Offset of the aspiration level."""
    jitter: float
    """Added period jitter."""
    shimmer: float
    """Added amplitude shimmer."""
    f1_scale: float
    """Multiplier on F1 (vocal effort opens the jaw)."""
    formant_scale: float
    """Multiplier on all formants (spread lips, as in smiling, shorten the vocal tract)."""
    centralisation: float
    """0..1: how far vowel targets drift towards schwa (reduced articulation)."""
    tremor_st: float
    """Depth of a 4-8 Hz pitch tremor in semitones."""
    pause_probability: float
    """Chance of a pause after each word."""
    final_st: float
    """Pitch movement over the last half second (negative: fall, positive: rise)."""
    attack_ms: float
    """Rise time of each vowel's amplitude."""


STYLES: dict[str, EmotionStyle] = {
    # columns in EmotionStyle's field order; offsets are scaled per speaker and per utterance
    #                   pitch range rate  loud   oq     tilt   breath jitter shim  f1    fmts  cent trem pause final attack
    "neu": EmotionStyle(0.0,  1.00, 1.00, 0.0,  0.00,  0.00,  0.00,  0.000, 0.00, 1.00, 1.00, 0.0, 0.0, 0.25, -2.0, 25),
    "hap": EmotionStyle(2.5,  1.70, 1.10, 2.0,  -0.08, -0.18, 0.00,  0.002, 0.00, 1.06, 1.06, 0.0, 0.0, 0.20, 1.5,  18),
    "ang": EmotionStyle(2.0,  1.30, 1.10, 4.0,  -0.18, -0.35, -0.01, 0.004, 0.02, 1.15, 1.00, 0.0, 0.0, 0.20, -4.0, 8),
    "sad": EmotionStyle(-1.5, 0.45, 0.75, -3.0, 0.12,  0.20,  0.08,  0.003, 0.02, 0.94, 0.98, 0.4, 0.0, 0.45, -1.0, 45),
    "fea": EmotionStyle(3.5,  1.10, 1.20, -1.0, 0.05,  0.05,  0.14,  0.012, 0.04, 1.02, 1.02, 0.1, 0.8, 0.40, 2.0,  20),
}  # fmt: skip


@dataclass(frozen=True)
class CorpusSpec:
    """What `write_emotion_corpus` generates; every clip follows from these fields alone."""

    num_speakers: int = 36
    utterances_per_speaker_per_emotion: int = 4
    emotions: tuple[str, ...] = EMOTIONS
    min_seconds: float = 1.5
    max_seconds: float = 4.0
    sample_rate: int = 16000
    seed: int = 0


@dataclass
class Utterance:
    """One synthesised clip and what went into it."""

    waveform: np.ndarray
    """(S,) float32, peak <= 1."""
    f0_hz: np.ndarray
    """(S,) float32 pitch of the glottal source; 0 where the clip is not voiced."""
    emotion: str
    speaker: str
    controls: dict[str, float] = field(default_factory=dict)
    """The per-utterance voice parameters actually used (pitch shift, rate, level...)."""


def speaker_name(index: int) -> str:
    """The speaker field (and file-name prefix) of speaker `index`."""
    return f"spk{index:03d}"


def make_speaker(index: int, seed: int = 0) -> SpeakerProfile:
    """Speaker `index` of the corpus with `seed`; even indices have lower, longer voices."""
    rng = np.random.default_rng([seed, _STREAM_SPEAKER, index])
    low_voice = index % 2 == 0
    f0_lo, f0_hi = (85.0, 150.0) if low_voice else (165.0, 265.0)
    return SpeakerProfile(
        name=speaker_name(index),
        f0_hz=float(np.exp(rng.uniform(np.log(f0_lo), np.log(f0_hi)))),
        pitch_range_st=float(rng.uniform(2.0, 5.0)),
        formant_scale=float(rng.uniform(0.92, 1.05) if low_voice else rng.uniform(1.08, 1.22)),
        syllable_rate=float(rng.uniform(3.6, 5.4)),
        level_db=float(rng.uniform(-8.0, 8.0)),
        open_quotient=float(rng.uniform(0.52, 0.66)),
        tilt=float(rng.uniform(0.45, 0.65)),
        breathiness=float(rng.uniform(0.01, 0.05)),
        jitter=float(rng.uniform(0.003, 0.008)),
        shimmer=float(rng.uniform(0.02, 0.05)),
        expressiveness=float(rng.uniform(0.7, 1.2)),
    )


# ----------------------------------------------------------------------------- filtering


def _linear_recurrence(x: np.ndarray, a: np.ndarray | float) -> np.ndarray:
    """z[n] = a[n] * z[n-1] + x[n] with z[-1] = 0, for time-varying coefficients.

    x: (S,) real or complex; a: (S,) or a scalar, 0 < |a| < 1. Returns: (S,) float64 when both
    are real, else complex128.

    Vectorised in blocks of _BLOCK samples: inside a block, with P[m] = a[0]...a[m],
    z[m] = P[m] * (carry + sum_{k<=m} x[k] / P[k]); the carries (the state entering each block)
    are one short Python loop over blocks. Each term x[k] / P[k] is scaled back by P[m], so the
    relative error stays at float64 precision as long as |P| does not underflow (|a|^_BLOCK
    stays far above 1e-300 for every pole used here).
    """
    dtype = np.result_type(x, a, np.float64)
    num_samples = x.shape[0]
    num_blocks = -(-num_samples // _BLOCK)
    xb = np.zeros(num_blocks * _BLOCK, dtype=dtype)
    xb[:num_samples] = x
    xb = xb.reshape(num_blocks, _BLOCK)
    if np.ndim(a) == 0:  # constant coefficient: the same powers in every block
        prod = np.broadcast_to(np.asarray(a, dtype) ** np.arange(1, _BLOCK + 1), xb.shape)
    else:
        ab = np.ones(num_blocks * _BLOCK, dtype=dtype)
        ab[:num_samples] = a
        prod = np.cumprod(ab.reshape(num_blocks, _BLOCK), axis=1)  # (blocks, L)
    local = prod * np.cumsum(xb / prod, axis=1)  # (blocks, L): solution with zero initial state
    carry = np.empty(num_blocks, dtype=dtype)
    state = dtype.type(0)
    for b in range(num_blocks):
        carry[b] = state
        state = local[b, -1] + prod[b, -1] * state
    return (local + prod * carry[:, None]).reshape(-1)[:num_samples]


def resonator(
    x: np.ndarray, freq_hz: np.ndarray | float, bandwidth_hz: np.ndarray | float, sample_rate: int
) -> np.ndarray:
    """A 2nd-order IIR resonator with unit gain at DC (Klatt's formant resonator).

    Equivalent to y[n] = A x[n] + 2 r cos(theta) y[n-1] - r^2 y[n-2], A = 1 - 2 r cos(theta) + r^2,
    r = exp(-pi B / fs), theta = 2 pi F / fs, computed as the imaginary part of a complex
    one-pole recursion so that it vectorises (`_linear_recurrence`); exact for constant F and B,
    and a smooth time-varying resonator when they move.

    x: (S,) float; freq_hz, bandwidth_hz: scalars or (S,) arrays. Returns: (S,) float64.
    """
    theta = 2 * np.pi / sample_rate * np.asarray(freq_hz, dtype=np.float64)  # () or (S,)
    radius = np.exp(-np.pi / sample_rate * np.asarray(bandwidth_hz, dtype=np.float64))
    cos, sin = np.cos(theta), np.sin(theta)
    gain = 1.0 - 2.0 * radius * cos + radius**2
    state = _linear_recurrence(x, radius * (cos + 1j * sin))
    # Im(e^{i theta} z) / sin(theta) turns the complex pole's response into the real resonator's
    return gain * (state.real + state.imag * (cos / sin))


def _tilt_lowpass(x: np.ndarray, pole: float) -> np.ndarray:
    """Two one-pole low-passes y[n] = (1 - pole) x[n] + pole y[n-1] in cascade: unit gain at DC,
    -12 dB/octave above fs (1 - pole) / (2 pi); pole 0.2 -> 0.8 darkens 4 kHz by ~20 dB."""
    once = _linear_recurrence((1.0 - pole) * x, pole)
    return _linear_recurrence((1.0 - pole) * once, pole)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average over `width` samples along axis 0, edges held. x: (S,) or (S, K)."""
    if width <= 1:
        return x
    pad = [(width // 2, width - width // 2)] + [(0, 0)] * (x.ndim - 1)
    sums = np.cumsum(np.pad(x, pad, mode="edge"), axis=0)
    sums = np.concatenate([np.zeros_like(sums[:1]), sums])
    return (sums[width:-1] - sums[: -width - 1]) / width


# ----------------------------------------------------------------------------- synthesis


def _utterance_controls(
    speaker: SpeakerProfile, style: EmotionStyle, rng: np.random.Generator
) -> dict[str, float]:
    """The speaker's voice moved by the emotion, with per-utterance intensity and noise."""
    k = speaker.expressiveness * rng.uniform(0.75, 1.25)  # how strongly this utterance shows it
    return {
        "intensity": k,
        "pitch_shift_st": k * style.pitch_shift_st + rng.normal(0.0, 1.0),
        "pitch_range_st": speaker.pitch_range_st
        * style.pitch_range**k
        * np.exp(rng.normal(0, 0.15)),
        "syllable_rate": speaker.syllable_rate * style.rate**k * np.exp(rng.normal(0, 0.07)),
        "level_db": speaker.level_db + k * style.loudness_db + rng.normal(0.0, 3.0),
        "open_quotient": float(
            np.clip(speaker.open_quotient + k * style.open_quotient + rng.normal(0, 0.03), 0.3, 0.9)
        ),
        "tilt": float(np.clip(speaker.tilt + k * style.tilt + rng.normal(0, 0.04), 0.05, 0.9)),
        "breathiness": float(
            np.clip(speaker.breathiness + k * style.breathiness + rng.normal(0, 0.01), 0.0, 0.3)
        ),
        "jitter": max(0.001, speaker.jitter + k * style.jitter),
        "shimmer": max(0.005, speaker.shimmer + k * style.shimmer),
        "f1_scale": style.f1_scale**k,
        "formant_scale": style.formant_scale**k,
        "centralisation": float(np.clip(k * style.centralisation, 0.0, 0.8)),
        "tremor_st": k * style.tremor_st,
        "pause_probability": style.pause_probability,
        "final_st": k * style.final_st + rng.normal(0.0, 1.0),
        "attack_ms": style.attack_ms,
    }


@dataclass
class _Timeline:
    """Per-sample control tracks of one utterance, filled syllable by syllable."""

    voicing: np.ndarray  # (S,) amplitude of the glottal source
    formants: np.ndarray  # (S, 5) formant targets in Hz
    accent_st: np.ndarray  # (S,) pitch-accent targets in semitones
    noise: np.ndarray  # (S,) consonant-noise envelope
    noise_hz: np.ndarray  # (S,) consonant-noise centre frequency
    breath: np.ndarray  # (S,) inhalation-noise envelope
    speech_end: int  # end (exclusive) of the last syllable
    vowels: list[tuple[int, int, float]] = field(default_factory=list)  # start, stop, level dB


def _ramp_window(length: int, attack: int, release: int) -> np.ndarray:
    """(length,) raised-cosine attack, flat top, raised-cosine release."""
    window = np.ones(length)
    attack, release = min(attack, length // 2), min(release, length // 2)
    if attack:
        window[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    if release:
        window[length - release :] = 0.5 + 0.5 * np.cos(np.pi * np.arange(1, release + 1) / release)
    return window


def _timeline(
    speaker: SpeakerProfile,
    controls: dict[str, float],
    rng: np.random.Generator,
    num_samples: int,
    sample_rate: int,
) -> _Timeline:
    """Lay out words of 1-4 syllables (consonant + vowel), pauses and breaths."""
    fs = sample_rate
    vowel_names = sorted(VOWEL_FORMANTS)
    targets = {
        name: speaker.formant_scale
        * controls["formant_scale"]
        * ((1 - controls["centralisation"]) * np.array(f) + controls["centralisation"] * SCHWA)
        for name, f in VOWEL_FORMANTS.items()
    }
    for formants in targets.values():
        formants[0] *= controls["f1_scale"]
    track = _Timeline(
        voicing=np.zeros(num_samples),
        formants=np.empty((num_samples, 5)),
        accent_st=np.zeros(num_samples),
        noise=np.zeros(num_samples),
        noise_hz=np.full(num_samples, 3000.0),
        breath=np.zeros(num_samples),
        speech_end=0,
    )
    track.formants[:] = SCHWA * speaker.formant_scale
    syllable_seconds = 1.0 / controls["syllable_rate"]
    attack = int(controls["attack_ms"] * fs / 1000)
    half_range = controls["pitch_range_st"] / 2
    margin = min(1.0, num_samples / fs / 2)  # short clips get shorter silences
    end = num_samples - int(rng.uniform(0.05, 0.15) * margin * fs)  # trailing silence
    t = int(rng.uniform(0.05, 0.2) * margin * fs)  # leading silence
    syllables_left = int(rng.integers(1, 5))
    last_vowel = SCHWA * speaker.formant_scale
    while t < end - int(0.06 * fs):
        if syllables_left == 0:  # word boundary: maybe a pause, maybe a breath in it
            syllables_left = int(rng.integers(1, 5))
            if rng.random() < controls["pause_probability"]:
                pause = min(int(rng.uniform(0.12, 0.4) * margin * fs), end - t)
                if pause > int(0.15 * fs) and rng.random() < 0.5 + controls["breathiness"] * 3:
                    track.breath[t : t + pause] = np.hanning(pause) * rng.uniform(0.5, 1.0)
                track.formants[t : t + pause] = last_vowel
                t += pause
                continue
        syllables_left -= 1
        length = int(syllable_seconds * rng.uniform(0.7, 1.3) * fs)
        name = vowel_names[int(rng.integers(len(vowel_names)))]
        vowel = targets[name]
        vowel = vowel * np.exp(rng.normal(0.0, 0.04, size=5))  # token-to-token variation
        consonant = int(length * rng.uniform(0.25, 0.4)) if rng.random() < 0.75 else 0
        consonant = min(consonant, end - t)
        if consonant:  # a fricative (long, narrow band) or plosive burst (short, broad)
            fricative = rng.random() < 0.5
            burst = consonant if fricative else min(consonant, int(rng.uniform(0.015, 0.03) * fs))
            start = t + consonant - burst
            track.noise[start : t + consonant] = _ramp_window(burst, burst // 4, burst // 3)
            track.noise_hz[start : t + consonant] = speaker.formant_scale * (
                rng.uniform(3500.0, 5500.0) if fricative else rng.uniform(1200.0, 3000.0)
            )
            track.formants[t : t + consonant] = vowel  # coarticulation: tract already moving
        t += consonant
        voiced = min(length - consonant, end - t)
        if voiced <= 0:
            break
        stress = rng.normal(0.0, 1.0)  # stressed syllables are louder and carry the pitch accent
        track.voicing[t : t + voiced] = _ramp_window(voiced, attack, voiced // 3)
        track.vowels.append((t, t + voiced, INTRINSIC_LEVEL_DB[name] + 2.5 * stress))
        track.formants[t : t + voiced] = vowel
        track.accent_st[t : t + voiced] = half_range * np.clip(stress, -2.0, 2.0)
        last_vowel = vowel
        t += voiced
        track.speech_end = t
    track.formants[track.speech_end :] = last_vowel
    return track


def _syllable_gain(
    speech: np.ndarray, vowels: list[tuple[int, int, float]], smoothing: int
) -> np.ndarray:
    """(S,) gain that brings each vowel to its planned level (dB, relative), held until the
    next vowel and smoothed: resonator gains differ by vowel far more than real vowels do."""
    gain = np.ones(speech.shape[0])
    for i, (start, stop, level_db) in enumerate(vowels):
        rms = np.sqrt(np.mean(speech[start:stop] ** 2))
        hold_until = vowels[i + 1][0] if i + 1 < len(vowels) else speech.shape[0]
        gain[0 if i == 0 else start : hold_until] = 10 ** (level_db / 20) / max(rms, 1e-12)
    return _smooth(gain, smoothing)


def _pitch_contour(
    track: _Timeline,
    speaker: SpeakerProfile,
    controls: dict[str, float],
    rng: np.random.Generator,
    sample_rate: int,
) -> np.ndarray:
    """(S,) f0 in Hz: accents, declination, final rise/fall, tremor and slow wander."""
    num_samples = track.voicing.shape[0]
    seconds = np.arange(num_samples) / sample_rate
    semitones = _smooth(_smooth(track.accent_st, int(0.06 * sample_rate)), int(0.06 * sample_rate))
    speech_end = max(track.speech_end, 1)
    progress = np.clip(np.arange(num_samples) / speech_end, 0.0, 1.0)
    semitones += controls["pitch_shift_st"] + 0.3 * controls["pitch_range_st"] * (0.5 - progress)
    final_start = max(0, speech_end - int(0.5 * sample_rate))
    final = np.clip((np.arange(num_samples) - final_start) / (speech_end - final_start + 1), 0, 1)
    semitones += controls["final_st"] * final**2
    tremor_hz = rng.uniform(4.0, 8.0)
    tremor_depth = controls["tremor_st"] * (1 + 0.5 * np.sin(2 * np.pi * 1.3 * seconds))
    semitones += tremor_depth * np.sin(2 * np.pi * tremor_hz * seconds + rng.uniform(0, 2 * np.pi))
    for _ in range(2):  # slow wander, a fraction of a semitone
        semitones += 0.3 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * seconds + rng.uniform(0, 6.3))
    return np.clip(speaker.f0_hz * 2.0 ** (semitones / 12.0), 50.0, 600.0)


def _glottal_flow(
    f0_hz: np.ndarray, controls: dict[str, float], rng: np.random.Generator, sample_rate: int
) -> np.ndarray:
    """(S,) Rosenberg glottal flow pulses with jitter and shimmer, peak about 1."""
    num_samples = f0_hz.shape[0]
    max_pulses = num_samples // 2 + 1  # periods are at least 2 samples long
    jitter = rng.normal(0.0, 1.0, max_pulses)
    shimmer = rng.normal(0.0, 1.0, max_pulses)
    starts, periods = [], []
    position = 0.0
    k = 0
    while position < num_samples:  # one iteration per glottal period (a few hundred)
        period = sample_rate / f0_hz[int(position)] * (1.0 + controls["jitter"] * jitter[k])
        starts.append(position)
        periods.append(max(period, 2.0))
        position += periods[-1]
        k += 1
    start = np.array(starts)
    period_len = np.array(periods)
    amplitude = np.exp(controls["shimmer"] * shimmer[:k])
    samples = np.arange(num_samples)
    pulse = np.searchsorted(start, samples, side="right") - 1  # (S,) which period each sample is in
    phase = (samples - start[pulse]) / period_len[pulse]  # (S,) position within the period, 0..1
    open_quotient = controls["open_quotient"]
    speed = 2.5  # opening lasts 2.5x as long as closing
    rise = open_quotient * speed / (1 + speed)
    fall = open_quotient / (1 + speed)
    flow = np.where(
        phase < rise,
        0.5 - 0.5 * np.cos(np.pi * phase / rise),
        np.where(phase < rise + fall, np.cos(0.5 * np.pi * (phase - rise) / fall), 0.0),
    )
    return flow * amplitude[pulse]


def render_utterance(
    speaker: SpeakerProfile,
    emotion: str,
    rng: np.random.Generator,
    sample_rate: int = 16000,
    seconds: float = 3.0,
) -> Utterance:
    """Synthesise one clip of `speaker` speaking with `emotion` (one of STYLES).

    Returns the waveform (S,) float32 with S = round(seconds * sample_rate), peak <= 1,
    together with its pitch track and the controls used.
    Raises: ValueError for an unknown emotion or a clip shorter than 0.3 s.
    """
    if emotion not in STYLES:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {sorted(STYLES)}")
    num_samples = round(seconds * sample_rate)
    if num_samples < int(0.3 * sample_rate):
        raise ValueError(f"seconds must be at least 0.3, got {seconds}")
    fs = sample_rate
    controls = _utterance_controls(speaker, STYLES[emotion], rng)
    track = _timeline(speaker, controls, rng, num_samples, fs)
    f0_hz = _pitch_contour(track, speaker, controls, rng, fs)

    # source: flow derivative (lip radiation folded in), darkened by the tilt low-pass
    flow = _glottal_flow(f0_hz, controls, rng, fs)
    voicing = _smooth(track.voicing, int(0.004 * fs))
    excitation = _tilt_lowpass(np.diff(flow, prepend=0.0), controls["tilt"]) * voicing
    voiced_rms = np.sqrt(np.mean(excitation[voicing > 0.1] ** 2)) if (voicing > 0.1).any() else 1.0
    # aspiration: turbulence strongest while the glottis is open, high-passed by a difference
    turbulence = np.diff(rng.normal(0.0, 1.0, num_samples + 1))
    excitation += 2.0 * controls["breathiness"] * voiced_rms * turbulence * (0.3 + flow) * voicing

    # vocal tract: five cascaded formant resonators with smooth vowel-to-vowel transitions
    formants = _smooth(_smooth(track.formants, int(0.03 * fs)), int(0.02 * fs))  # (S, 5)
    formants = np.minimum(formants, 0.45 * fs)  # below Nyquist, whatever the sample rate
    bandwidths = FORMANT_BANDWIDTHS * (
        1.0 + 3.0 * controls["breathiness"] * np.array([2, 1, 1, 1, 1])
    )
    speech = excitation
    for i in range(5):
        speech = resonator(speech, formants[:, i], bandwidths[i], fs)

    speech *= _syllable_gain(speech, track.vowels, int(0.01 * fs))

    # consonant bursts and inhalations: filtered noise at levels relative to the vowels
    active = voicing > 0.1
    vowel_rms = np.sqrt(np.mean(speech[active] ** 2)) if active.any() else 1e-3
    hiss = rng.normal(0.0, 1.0, num_samples)
    noise_hz = np.minimum(track.noise_hz, 0.45 * fs)
    consonants = resonator(hiss * track.noise, noise_hz, 0.35 * noise_hz, fs)
    consonants += 0.1 * np.diff(hiss * track.noise, prepend=0.0)  # broadband part of bursts
    if track.noise.any():
        noise_rms = np.sqrt(np.mean(consonants[track.noise > 0.1] ** 2))
        consonants *= rng.uniform(0.05, 0.15) * vowel_rms / max(noise_rms, 1e-12)
    breath = resonator(rng.normal(0.0, 1.0, num_samples), 1400.0 * speaker.formant_scale, 800.0, fs)
    breath *= track.breath * vowel_rms * rng.uniform(0.03, 0.08) / max(np.std(breath), 1e-12)
    speech = speech + consonants + breath

    # level: active-speech RMS at -26 dBFS + speaker/emotion/utterance offsets, then a noise floor
    level = 10 ** ((-26.0 + controls["level_db"]) / 20)
    active |= track.noise > 0.1
    active_rms = np.sqrt(np.mean(speech[active] ** 2)) if active.any() else np.std(speech)
    speech *= level / max(float(active_rms), 1e-12)
    speech += rng.normal(0.0, 10 ** (-70 / 20), num_samples)
    peak = float(np.abs(speech).max())
    if peak > 0.99:  # rare: loud speaker, loud emotion; scale rather than clip
        speech *= 0.99 / peak
    return Utterance(
        waveform=speech.astype(np.float32),
        f0_hz=np.where(voicing > 0.1, f0_hz, 0.0).astype(np.float32),
        emotion=emotion,
        speaker=speaker.name,
        controls=controls,
    )


def synthesize_utterance(
    speaker: SpeakerProfile,
    emotion: str,
    rng: np.random.Generator,
    sample_rate: int = 16000,
    seconds: float = 3.0,
) -> np.ndarray:
    """(S,) float32 waveform of `render_utterance`, S = round(seconds * sample_rate), peak <= 1."""
    return render_utterance(speaker, emotion, rng, sample_rate, seconds).waveform


# ----------------------------------------------------------------------------- the corpus


def clip_rng(seed: int, speaker_index: int, emotion: str, utterance: int) -> np.random.Generator:
    """The random stream of one clip: it depends on nothing else, so clips are independent."""
    return np.random.default_rng(
        [seed, _STREAM_CLIP, speaker_index, EMOTIONS.index(emotion), utterance]
    )


def assign_speakers(
    num_speakers: int, labelled_speakers: tuple[int, int], seed: int
) -> dict[str, list[int]]:
    """Speaker indices of each split: {"unlabelled": [...], "train": [...], "test": [...]}.

    labelled_speakers: (training, held-out) speaker counts; the other speakers form the
    unlabelled pool. Lower and higher voices alternate in the draw, so each split gets both.
    """
    num_train, num_test = labelled_speakers
    if num_train < 1 or num_test < 1 or num_train + num_test > num_speakers:
        raise ValueError(
            f"labelled_speakers={labelled_speakers} needs 1+ training and 1+ held-out speakers "
            f"out of num_speakers={num_speakers}"
        )
    rng = np.random.default_rng([seed, _STREAM_SPLIT])
    low = rng.permutation(np.arange(0, num_speakers, 2)).tolist()
    high = rng.permutation(np.arange(1, num_speakers, 2)).tolist()
    order = [s for pair in zip(low, high, strict=False) for s in pair]
    order += low[len(high) :] + high[len(low) :]
    return {
        "test": sorted(order[:num_test]),
        "train": sorted(order[num_test : num_test + num_train]),
        "unlabelled": sorted(order[num_test + num_train :]),
    }


def _write_wav_atomically(path: Path, waveform: np.ndarray, sample_rate: int) -> None:
    with atomic_write(path, suffix=".wav", sync=False) as tmp:  # a generated file: no fsync
        sf.write(tmp, waveform, sample_rate, subtype="PCM_16", format="WAV")


def _clip_plan(spec: CorpusSpec, speaker_index: int) -> list[tuple[str, str, int]]:
    """(key, emotion, utterance) of one speaker's clips; keys are numbered in a seeded order
    so that file names do not give the category away."""
    pairs = [(e, u) for e in spec.emotions for u in range(spec.utterances_per_speaker_per_emotion)]
    order = np.random.default_rng([spec.seed, _STREAM_KEYS, speaker_index]).permutation(len(pairs))
    return [(f"{speaker_name(speaker_index)}_{i:03d}", *pairs[j]) for i, j in enumerate(order)]


def _render_speaker(job: tuple[Path, CorpusSpec, int]) -> None:
    """Write one speaker's clips (a process-pool task)."""
    wav_dir, spec, speaker_index = job
    speaker = make_speaker(speaker_index, spec.seed)
    for key, emotion, utterance in _clip_plan(spec, speaker_index):
        rng = clip_rng(spec.seed, speaker_index, emotion, utterance)
        seconds = rng.uniform(spec.min_seconds, spec.max_seconds)
        waveform = synthesize_utterance(speaker, emotion, rng, spec.sample_rate, seconds)
        _write_wav_atomically(wav_dir / f"{key}.wav", waveform, spec.sample_rate)


def _check_spec(spec: CorpusSpec) -> None:
    unknown = [e for e in spec.emotions if e not in STYLES]
    if unknown or len(set(spec.emotions)) != len(spec.emotions) or len(spec.emotions) < 2:
        raise ValueError(f"emotions must be 2+ distinct names from {EMOTIONS}, got {spec.emotions}")
    if not 0.3 <= spec.min_seconds <= spec.max_seconds:
        raise ValueError(
            f"need 0.3 <= min_seconds <= max_seconds, got {spec.min_seconds}, {spec.max_seconds}"
        )
    if spec.utterances_per_speaker_per_emotion < 1 or spec.sample_rate < 8000:
        raise ValueError(
            f"need utterances_per_speaker_per_emotion >= 1 and sample_rate >= 8000, got "
            f"{spec.utterances_per_speaker_per_emotion}, {spec.sample_rate}"
        )


def write_emotion_corpus(
    out_dir: str | Path,
    spec: CorpusSpec | None = None,
    labelled_speakers: tuple[int, int] = (12, 8),
    num_workers: int = 2,
) -> dict[str, Path]:
    """Write the corpus: WAV files (16-bit PCM) under `out_dir/wav/` and three manifests.

    unlabelled.jsonl  the pretraining pool: the speakers outside the labelled ones, no labels
    train.jsonl       `labelled_speakers[0]` speakers with labels, for probes and category terms
    test.jsonl        `labelled_speakers[1]` held-out speakers with labels
    corpus.json       the spec, generator version and speaker split (written last)

    Every manifest entry has corpus "synthetic-emotion", the speaker, and `extra={"split": ...}`.
    Splits are by speaker, so no speaker appears in two of them. Idempotent: when corpus.json
    matches and every file is present, nothing is rewritten; otherwise every clip is, and clips
    an earlier spec wrote beyond this one's are deleted.

    num_workers: processes for the synthesis (1: in this process); the bytes do not depend on it.
    Returns: {"unlabelled": path, "train": path, "test": path}.
    Raises: ValueError naming a bad spec field or split size.
    """
    spec = spec or CorpusSpec()
    _check_spec(spec)
    splits = assign_speakers(spec.num_speakers, labelled_speakers, spec.seed)
    out_dir = Path(out_dir)
    wav_dir = out_dir / "wav"
    paths = {split: out_dir / f"{split}.jsonl" for split in SPLITS}
    stamp = out_dir / "corpus.json"
    plans = {s: _clip_plan(spec, s) for s in range(spec.num_speakers)}
    description = json.dumps(
        {
            "generator_version": GENERATOR_VERSION,
            "spec": asdict(spec),
            "labelled_speakers": list(labelled_speakers),
            "speakers": {split: [speaker_name(s) for s in splits[split]] for split in SPLITS},
        },
        indent=2,
    )
    wav_paths = [wav_dir / f"{key}.wav" for plan in plans.values() for key, _, _ in plan]
    if (
        stamp.is_file()
        and stamp.read_text(encoding="utf-8") == description + "\n"
        and all(p.is_file() for p in [*paths.values(), *wav_paths])
    ):
        return paths

    stamp.unlink(missing_ok=True)  # a crash from here on leaves no stale stamp behind
    wav_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(wav_dir, spec, s) for s in range(spec.num_speakers)]
    if num_workers > 1:
        with ProcessPoolExecutor(max_workers=min(num_workers, len(jobs))) as pool:
            list(pool.map(_render_speaker, jobs))
    else:
        for job in jobs:
            _render_speaker(job)

    wanted = set(wav_paths)
    for stale in wav_dir.glob("spk*_*.wav"):  # clips of an earlier spec with more of them
        if stale not in wanted:
            stale.unlink()

    for split in SPLITS:
        entries: list[ManifestEntry] = []
        for s in splits[split]:
            for key, emotion, _ in plans[s]:
                entries.append(
                    entry_from_audio_file(
                        wav_dir / f"{key}.wav",
                        key,
                        corpus=CORPUS,
                        speaker=speaker_name(s),
                        label=None if split == "unlabelled" else emotion,
                        root=out_dir,
                        extra={"split": split},
                    )
                )
        write_manifest(paths[split], sorted(entries, key=lambda e: e.key), skip_unchanged=True)
    write_text_atomically(stamp, description + "\n")
    return paths


# ----------------------------------------------------------------------------- a flat corpus

PEAK = 0.1
"""Peak absolute amplitude of every `write_synthetic_corpus` clip."""


def write_synthetic_corpus(
    out_dir: str | Path,
    num_files: int = 16,
    seed: int = 0,
    min_seconds: float = 1.0,
    max_seconds: float = 4.0,
    sample_rate: int = 16_000,
    labels: Sequence[str] | None = None,
    corpus: str = "synthetic",
    num_speakers: int = 4,
) -> Path:
    """Write `num_files` WAV files under `out_dir/wav/` and `out_dir/manifest.jsonl` (for tests
    and benchmarks that need a quick manifest rather than the demo's speaker splits).

    Utterance i depends only on (seed, i): the same call always writes the same audio, and
    a larger `num_files` extends a smaller corpus. Speaker `spk{i % num_speakers:02d}` says it
    with category EMOTIONS[j % 5], where j = i % len(labels) with `labels` (utterance i gets
    labels[j], so a probe has something to find) and j = i without; peak `PEAK`.

    Returns: the manifest path (relative audio paths, readable with `read_manifest`).
    Raises: ValueError for num_files < 1 or durations outside 0.3 <= min <= max.
    """
    if num_files < 1 or not 0.3 <= min_seconds <= max_seconds:
        raise ValueError(
            f"need num_files >= 1 and 0.3 <= min_seconds <= max_seconds, got {num_files}, "
            f"{min_seconds}, {max_seconds}"
        )
    out_dir = Path(out_dir)
    wav_dir = out_dir / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    speakers = [make_speaker(s, seed) for s in range(num_speakers)]
    entries = []
    for i in range(num_files):
        rng = np.random.default_rng([seed, i])
        seconds = rng.uniform(min_seconds, max_seconds)
        label_index = i % len(labels) if labels else i
        emotion = EMOTIONS[label_index % len(EMOTIONS)]
        waveform = render_utterance(speakers[i % num_speakers], emotion, rng, sample_rate, seconds)
        # one fixed peak: tests read levels without knowing the speaker's recording gain
        audio = PEAK * waveform.waveform / max(float(np.abs(waveform.waveform).max()), 1e-12)
        key = f"{corpus}_{i:05d}"
        path = wav_dir / f"{key}.wav"
        sf.write(str(path), audio, sample_rate, subtype="PCM_16")
        entries.append(
            entry_from_audio_file(
                path,
                key,
                corpus=corpus,
                speaker=f"spk{i % num_speakers:02d}",
                label=labels[label_index] if labels else None,
                root=out_dir,
            )
        )
    return write_manifest(out_dir / "manifest.jsonl", entries)
