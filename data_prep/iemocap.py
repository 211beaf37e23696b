"""IEMOCAP -> manifest with leave-one-session-out and leave-one-speaker-out folds.

    python -m data_prep.iemocap --root /data/IEMOCAP_full_release --out manifests/iemocap
    python -m data_prep.iemocap --root ... --out manifests/iemocap_all --label-set all

Reads `Session{1..5}/dialog/EmoEvaluation/*.txt` (the summary line of each utterance block;
sub-folders and hidden files are ignored) and `Session*/sentences/wav/<dialog>/<utt>.wav`.

Label sets:
    4class  (default) neu, hap, ang, sad with exc merged into hap: 5531 utterances
            (neu 1708, hap 1636, ang 1103, sad 1084), about 7.0 h.
    all     every summary line, 10 039 utterances, label = the release's code
            (neu hap exc ang sad fru sur fea dis oth); "xxx" (no majority) has no label.

Fields besides the schema's: session (1-5), fold (= session: leave-one-session-out, test
sizes 1085 1023 1151 1031 1241 for 4class), speaker_fold (1-10, leave-one-speaker-out in the
order Ses01F Ses01M ... Ses05M), dialog, code (the release's label), start, end (seconds in
the dialog), valence, arousal, dominance.

The speaker is the session plus the gender letter of the utterance suffix:
`Ses01F_impro01_M003` is Ses01M. (The letter after `SesNN` in the dialog name is the
speaker who wore the markers, not the one speaking.)

The counts above are checked; any difference (a missing session, a modified release) is an
error unless --allow-count-mismatch.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data_prep.common import (
    PrepError,
    base_parser,
    check_counts,
    corpus_summary,
    entry_from_header,
    require_headers,
    run_main,
    write_prepared,
)
from emotion_ssl.data.manifest import ManifestEntry

SESSIONS = (1, 2, 3, 4, 5)
SUMMARY_LINE = re.compile(
    r"^\[(\d+\.\d+) - (\d+\.\d+)\]\t(Ses\d\d[FM]_\S+)\t(\w+)\t\[(.+), (.+), (.+)\]"
)
ALL_COUNTS = {
    "xxx": 2507,
    "fru": 1849,
    "neu": 1708,
    "ang": 1103,
    "sad": 1084,
    "exc": 1041,
    "hap": 595,
    "sur": 107,
    "fea": 40,
    "oth": 3,
    "dis": 2,
}
"""Every summary line of the release, by label code (10 039)."""
FOUR_CLASS_MAP = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
FOUR_CLASS_COUNTS = {"neu": 1708, "hap": 1636, "ang": 1103, "sad": 1084}
FOUR_CLASS_SESSION_COUNTS = {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241}
SPEAKERS = tuple(f"Ses{s:02d}{g}" for s in SESSIONS for g in "FM")
"""Leave-one-speaker-out order: speaker_fold k tests SPEAKERS[k - 1]."""


@dataclass(frozen=True)
class Utterance:
    """One summary line of an EmoEvaluation file."""

    key: str
    session: int
    dialog: str
    code: str
    start: float
    end: float
    vad: tuple[float, float, float]

    @property
    def speaker(self) -> str:
        # Ses01F_impro01_M003 -> Ses01M: the gender letter of the utterance suffix
        return f"Ses{self.session:02d}{self.key.rsplit('_', 1)[1][0]}"


def check_tree(root: Path) -> None:
    """Fail with the first missing folder when `root` is not IEMOCAP_full_release."""
    for session in SESSIONS:
        for sub in ("dialog/EmoEvaluation", "sentences/wav"):
            folder = root / f"Session{session}" / sub
            if not folder.is_dir():
                hint = ""
                if (root / "IEMOCAP_full_release").is_dir():
                    hint = f" (did you mean --root {root / 'IEMOCAP_full_release'}?)"
                raise PrepError(
                    f"{root} is not an IEMOCAP_full_release folder: {folder} is missing{hint}"
                )


def read_evaluations(root: Path) -> list[Utterance]:
    """Every summary line of Session*/dialog/EmoEvaluation/*.txt, in file and line order."""
    utterances: list[Utterance] = []
    seen: dict[str, str] = {}
    for session in SESSIONS:
        folder = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        files = sorted(
            p
            for p in folder.iterdir()
            if p.suffix == ".txt" and p.is_file() and not p.name.startswith(".")
        )
        if not files:
            raise PrepError(f"{folder} holds no EmoEvaluation .txt files")
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace")
            for line_no, line in enumerate(text.splitlines(), start=1):
                if not line.startswith("["):
                    continue
                match = SUMMARY_LINE.match(line)
                if match is None:
                    raise PrepError(f"{path}:{line_no}: not a summary line: {line!r}")
                start, end, key, code, *vad = match.groups()
                if not key.startswith(f"Ses{session:02d}"):
                    raise PrepError(f"{path}:{line_no}: {key} does not belong to Session{session}")
                if key in seen:
                    raise PrepError(f"{path}:{line_no}: {key} already labelled in {seen[key]}")
                seen[key] = str(path)
                utterances.append(
                    Utterance(
                        key=key,
                        session=session,
                        dialog=key.rsplit("_", 1)[0],
                        code=code,
                        start=float(start),
                        end=float(end),
                        vad=(float(vad[0]), float(vad[1]), float(vad[2])),
                    )
                )
    return utterances


def wav_path(root: Path, utterance: Utterance) -> Path:
    return (
        root
        / f"Session{utterance.session}"
        / "sentences"
        / "wav"
        / utterance.dialog
        / f"{utterance.key}.wav"
    )


def select(utterances: Sequence[Utterance], label_set: str) -> list[tuple[Utterance, str | None]]:
    """(utterance, label) pairs of the label set, in the order read."""
    if label_set == "4class":
        return [(u, FOUR_CLASS_MAP[u.code]) for u in utterances if u.code in FOUR_CLASS_MAP]
    if label_set == "all":
        return [(u, None if u.code == "xxx" else u.code) for u in utterances]
    raise PrepError(f"unknown --label-set {label_set!r}; use 4class or all")


def prepare_iemocap(
    root: Path,
    out_dir: Path,
    *,
    label_set: str = "4class",
    allow_count_mismatch: bool = False,
    relative: bool = False,
    num_workers: int = 8,
) -> list[ManifestEntry]:
    check_tree(root)
    utterances = read_evaluations(root)
    codes = Counter(u.code for u in utterances)
    check_counts(
        {**codes, "total": len(utterances)},
        {**ALL_COUNTS, "total": sum(ALL_COUNTS.values())},
        "IEMOCAP summary-line",
        allow_count_mismatch,
    )
    chosen = select(utterances, label_set)
    if label_set == "4class":
        found = Counter(label for _, label in chosen if label is not None)
        by_session = Counter(f"Session{u.session}" for u, _ in chosen)
        check_counts(
            {**found, **by_session},
            {**FOUR_CLASS_COUNTS}
            | {f"Session{s}": n for s, n in FOUR_CLASS_SESSION_COUNTS.items()},
            "IEMOCAP 4-class",
            allow_count_mismatch,
        )

    paths = [wav_path(root, u) for u, _ in chosen]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = "\n".join(f"  {p}" for p in missing[:10])
        raise PrepError(
            f"{len(missing)} labelled utterance(s) have no wav file under "
            f"Session*/sentences/wav:\n{shown}"
        )
    headers = require_headers(paths, num_workers, "IEMOCAP")
    speaker_fold = {speaker: i + 1 for i, speaker in enumerate(SPEAKERS)}
    entries = []
    for (utterance, label), path in zip(chosen, paths, strict=True):
        entries.append(
            entry_from_header(
                headers[path],
                utterance.key,
                out_dir,
                corpus="iemocap",
                speaker=utterance.speaker,
                label=label,
                relative=relative,
                extra={
                    "session": utterance.session,
                    "fold": utterance.session,
                    "speaker_fold": speaker_fold[utterance.speaker],
                    "dialog": utterance.dialog,
                    "code": utterance.code,
                    "start": utterance.start,
                    "end": utterance.end,
                    "valence": utterance.vad[0],
                    "arousal": utterance.vad[1],
                    "dominance": utterance.vad[2],
                },
            )
        )
    summary = corpus_summary(
        entries,
        corpus="iemocap",
        options={"label_set": label_set, "relative_paths": relative},
        fold_fields=("fold", "speaker_fold"),
    )
    write_prepared(out_dir, entries, summary)
    return entries


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(__doc__ or "", "the IEMOCAP_full_release folder")
    parser.add_argument("--label-set", choices=("4class", "all"), default="4class")
    parser.add_argument("--allow-count-mismatch", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()

    def prepare(args: argparse.Namespace) -> None:
        prepare_iemocap(
            args.root,
            args.out,
            label_set=args.label_set,
            allow_count_mismatch=args.allow_count_mismatch,
            relative=args.relative_paths,
            num_workers=args.workers,
        )

    return run_main(prepare, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
