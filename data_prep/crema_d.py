"""CREMA-D -> manifest with speaker-independent folds.

    python -m data_prep.crema_d --root /data/CREMA-D --out manifests/crema_d
    python -m data_prep.crema_d --root /data/CREMA-D --out manifests/crema_d_voice \\
        --label-source voice

Reads `AudioWAV/<ActorID>_<Sentence>_<Emotion>_<Level>.wav` (16 kHz mono): 7442 clips from
91 actors (1001-1091), 6 classes ang dis fea hap sad (1271 each) and neu (1087).

Label sources:
    intended  (default) the emotion the actor was asked to portray (the file name).
    voice     the crowd's majority vote on the audio-only presentation, column VoiceVote
              of summaryTable.csv (in --root or --root/processedResults). A clip whose
              vote is a tie ("A:N") has no single label and is left out (644 clips in the
              release); the summary counts them. 6798 clips are kept (neu 3897, ang 986,
              fea 645, dis 547, sad 370, hap 353); 3099 of them (45.6 %) agree with the
              intended emotion.

Fields besides the schema's: actor, sentence, level (LO MD HI XX), intended (intended
label), fold (1..--num-folds), and voice_vote in voice mode. Speaker = the actor id. Folds
are speaker-independent: actors sorted by id are dealt round-robin into the folds, so no
actor is ever on both sides (with 5 folds: 19 actors in fold 1, 18 in the others; test
sizes 1557 1475 1470 1464 1476 clips).
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from data_prep.common import (
    PrepError,
    base_parser,
    check_counts,
    corpus_summary,
    deal_folds,
    entry_from_header,
    logger,
    require_headers,
    run_main,
    write_prepared,
)
from emotion_ssl.data.manifest import ManifestEntry

NAME = re.compile(r"^(\d{4})_([A-Z]{3})_(ANG|DIS|FEA|HAP|NEU|SAD)_(LO|MD|HI|XX)$")
LABELS = {"ANG": "ang", "DIS": "dis", "FEA": "fea", "HAP": "hap", "NEU": "neu", "SAD": "sad"}
VOICE_LABELS = {"A": "ang", "D": "dis", "F": "fea", "H": "hap", "N": "neu", "S": "sad"}
EXPECTED_COUNTS = {"ang": 1271, "dis": 1271, "fea": 1271, "hap": 1271, "neu": 1087, "sad": 1271}
EXPECTED_ACTORS = 91


def find_clips(root: Path) -> list[tuple[Path, re.Match[str]]]:
    """Every AudioWAV/*.wav with its parsed name; any other name there is an error."""
    folder = root / "AudioWAV"
    if not folder.is_dir():
        raise PrepError(f"{root} is not a CREMA-D folder: {folder} is missing")
    clips, bad = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() != ".wav":
            continue
        match = NAME.match(path.stem)
        if match is None:
            bad.append(path.name)
        else:
            clips.append((path, match))
    if bad:
        raise PrepError(
            f"{len(bad)} file(s) in {folder} are not named ActorID_Sentence_Emotion_Level.wav: "
            f"{', '.join(bad[:10])}"
        )
    if not clips:
        raise PrepError(f"{folder} holds no .wav clips")
    return clips


def read_voice_votes(root: Path) -> dict[str, str]:
    """fileName -> VoiceVote from summaryTable.csv."""
    for candidate in (root / "summaryTable.csv", root / "processedResults" / "summaryTable.csv"):
        if candidate.is_file():
            with candidate.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            if not rows or "VoiceVote" not in rows[0] or "FileName" not in rows[0]:
                raise PrepError(f"{candidate}: expected the columns FileName and VoiceVote")
            return {row["FileName"]: row["VoiceVote"] for row in rows}
    raise PrepError(
        f"--label-source voice needs summaryTable.csv in {root} or {root / 'processedResults'}"
    )


def prepare_crema_d(
    root: Path,
    out_dir: Path,
    *,
    label_source: str = "intended",
    num_folds: int = 5,
    allow_count_mismatch: bool = False,
    relative: bool = False,
    num_workers: int = 8,
) -> list[ManifestEntry]:
    if label_source not in ("intended", "voice"):
        raise PrepError(f"unknown --label-source {label_source!r}; use intended or voice")
    clips = find_clips(root)
    intended = Counter(LABELS[m.group(3)] for _, m in clips)
    actors = sorted({m.group(1) for _, m in clips})
    check_counts(
        {**intended, "actors": len(actors)},
        {**EXPECTED_COUNTS, "actors": EXPECTED_ACTORS},
        "CREMA-D clip",
        allow_count_mismatch,
    )
    votes = read_voice_votes(root) if label_source == "voice" else {}
    if votes:
        missing = [p.stem for p, _ in clips if p.stem not in votes]
        if missing:
            raise PrepError(
                f"summaryTable.csv has no row for {len(missing)} clip(s): {', '.join(missing[:10])}"
            )

    fold_of = deal_folds(actors, num_folds)
    headers = require_headers([p for p, _ in clips], num_workers, "CREMA-D")
    entries: list[ManifestEntry] = []
    ties = 0
    for path, match in clips:
        actor, sentence, emotion, level = match.groups()
        extra: dict[str, object] = {
            "actor": int(actor),
            "sentence": sentence,
            "level": level,
            "intended": LABELS[emotion],
            "fold": fold_of[actor],
        }
        label: str | None = LABELS[emotion]
        if votes:
            vote = votes[path.stem]
            extra["voice_vote"] = vote
            if vote not in VOICE_LABELS:
                ties += 1  # "A:N" and the like: no single majority label
                continue
            label = VOICE_LABELS[vote]
        entries.append(
            entry_from_header(
                headers[path],
                path.stem,
                out_dir,
                corpus="crema_d",
                speaker=actor,
                label=label,
                relative=relative,
                extra=extra,
            )
        )
    notes = {}
    if votes:
        agree = sum(e.label == e.extra["intended"] for e in entries)
        notes = {"voice_ties_left_out": ties, "voice_agrees_with_intended": agree}
        logger.info(
            "voice labels: %d tied clips left out; %d of %d kept clips agree with the intended "
            "emotion",
            ties,
            agree,
            len(entries),
        )
    summary = corpus_summary(
        entries,
        corpus="crema_d",
        options={
            "label_source": label_source,
            "num_folds": num_folds,
            "relative_paths": relative,
        },
        fold_fields=("fold",),
        notes=notes,
    )
    write_prepared(out_dir, entries, summary)
    return entries


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(__doc__ or "", "the CREMA-D folder (holding AudioWAV/)")
    parser.add_argument("--label-source", choices=("intended", "voice"), default="intended")
    parser.add_argument("--num-folds", type=int, default=5)
    parser.add_argument("--allow-count-mismatch", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def prepare(args: argparse.Namespace) -> None:
        prepare_crema_d(
            args.root,
            args.out,
            label_source=args.label_source,
            num_folds=args.num_folds,
            allow_count_mismatch=args.allow_count_mismatch,
            relative=args.relative_paths,
            num_workers=args.workers,
        )

    return run_main(prepare, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
