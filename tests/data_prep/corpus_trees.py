"""Builders of miniature corpus trees (imported by conftest.py and the tests).

IEMOCAP follows ../shared/data/iemocap/FORMAT.md (its real data cannot be redistributed);
CREMA-D uses the real file list and durations in ../shared/data/crema-d.
"""

from __future__ import annotations

import csv
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CREMA_D = SHARED / "data" / "crema-d"
RAVDESS = SHARED / "data" / "ravdess"


def wav_bytes(num_samples: int, sample_rate: int = 16_000, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV of silence, built directly (thousands of files in well under 1 s)."""
    data = num_samples * channels * 2
    header = b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE"
    header += b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * channels * 2, channels * 2, 16
    )
    return header + b"data" + struct.pack("<I", data) + bytes(data)


# ----------------------------------------------------------------------------- IEMOCAP
FOUR_CLASS_POOL = {"neu": 1708, "hap": 595, "exc": 1041, "ang": 1103, "sad": 1084}
OTHER_POOL = {"xxx": 2507, "fru": 1849, "sur": 107, "fea": 40, "oth": 3, "dis": 2}
SESSION_SIZES = (1085, 1023, 1151, 1031, 1241)


@dataclass
class IemocapTree:
    root: Path
    labels: dict[str, str] = field(default_factory=dict)
    """utterance id -> label code, as written."""

    def speaker(self, key: str) -> str:
        return key[:5] + key.rsplit("_", 1)[1][0]


def _dialog_names(session: int) -> list[str]:
    names = []
    for letter in "FM":
        names += [f"Ses{session:02d}{letter}_impro{i:02d}" for i in range(1, 4)]
        names += [f"Ses{session:02d}{letter}_script0{i}_{j}" for i in (1, 2) for j in (1, 2)]
    return names


def build_iemocap(root: Path, codes_by_session: list[list[str]]) -> IemocapTree:
    """Session{1..5} trees whose summary lines carry `codes_by_session[s - 1]` in order.

    Utterances are dealt over 14 dialogs per session; the speaker letter of utterance i is
    "F" for even i and "M" for odd i, independent of the dialog's letter (the trap).
    """
    tree = IemocapTree(root)
    wav = wav_bytes(160)
    for session, codes in enumerate(codes_by_session, start=1):
        base = root / f"Session{session}"
        evaluation = base / "dialog" / "EmoEvaluation"
        (evaluation / "Categorical").mkdir(parents=True)
        (base / "dialog" / "transcriptions").mkdir(parents=True)
        # files that must be ignored: a sub-folder's .txt and a macOS resource fork
        (evaluation / "Categorical" / f"Ses{session:02d}F_impro01_e1_cat.txt").write_text(
            "[1.0 - 2.0]\tnot a summary line\n"
        )
        (evaluation / f"._Ses{session:02d}F_impro01.txt").write_bytes(b"\x00\x05\x16\x07junk")
        dialogs = _dialog_names(session)
        blocks: dict[str, list[str]] = {d: [] for d in dialogs}
        counters: dict[tuple[str, str], int] = {}
        for i, code in enumerate(codes):
            dialog = dialogs[i % len(dialogs)]
            letter = "FM"[i % 2]
            number = counters.get((dialog, letter), 0)
            counters[(dialog, letter)] = number + 1
            key = f"{dialog}_{letter}{number:03d}"
            start = 1.5 * number
            blocks[dialog].append(
                f"[{start:.4f} - {start + 1.2345:.4f}]\t{key}\t{code}\t[2.5000, 3.0000, 3.5000]\n"
                "C-E1:\tNeutral;\t()\nA-E1:\tval 3; act 3; dom  3;\t()\n"
            )
            tree.labels[key] = code
            folder = base / "sentences" / "wav" / dialog
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{key}.wav").write_bytes(wav)
        for dialog, lines in blocks.items():
            header = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
            (evaluation / f"{dialog}.txt").write_text(header + "\n".join(lines))
    return tree


def full_size_codes(seed: int = 0) -> list[list[str]]:
    """10 039 label codes over 5 sessions with the release's totals and 4-class session sizes."""
    rng = np.random.default_rng(seed)
    four = np.array([c for c, n in FOUR_CLASS_POOL.items() for _ in range(n)])
    rng.shuffle(four)
    cuts = np.cumsum(SESSION_SIZES)[:-1]
    sessions = [list(part) for part in np.split(four, cuts)]
    others = [c for c, n in OTHER_POOL.items() for _ in range(n)]
    for i, code in enumerate(others):
        sessions[i % 5].append(code)
    for codes in sessions:
        rng.shuffle(codes)
    return [[str(c) for c in codes] for codes in sessions]


# ----------------------------------------------------------------------------- CREMA-D
def crema_d_durations() -> dict[str, float]:
    rows = (CREMA_D / "audiowav_durations.tsv").read_text().splitlines()[1:]
    return {r.split("\t")[0][:-4]: float(r.split("\t")[2]) for r in rows if r}


def crema_d_names() -> list[str]:
    with (CREMA_D / "SentenceFilenames.csv").open(newline="") as f:
        return [row["Filename"] for row in csv.DictReader(f)]


PLACEHOLDER_RATE = 1_000
"""CREMA-D placeholders keep the real duration (to 1 ms) at 1 kHz: 37 MB instead of 600 MB."""
