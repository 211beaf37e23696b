"""RAVDESS (speech) -> manifest with actor-independent folds.

    python -m data_prep.ravdess --root /data/RAVDESS --out manifests/ravdess
    python -m data_prep.ravdess --root /data/RAVDESS --out manifests/ravdess4 --label-set 4class

Reads `Actor_NN/03-01-EE-II-SS-RR-AA.{wav,flac}`: modality 03 (audio only), vocal channel
01 (speech), emotion EE, intensity II (01 normal, 02 strong), statement SS, repetition RR,
actor AA (01-24, even = female). Song clips (vocal channel 02) are skipped and counted.

Label sets:
    8class  (default) neu cal hap sad ang fea dis sur: 1440 clips (neu 96, the others 192).
    4class  the four classes shared with IEMOCAP's standard set: neu hap ang sad, 672 clips.

Fields besides the schema's: actor (1-24), gender (F/M), intensity (normal/strong),
statement, repetition, fold. Speaker = "Actor_NN". Folds are actor-independent: actor pairs
(1,2), (3,4), ... are dealt round-robin, so with the default 4 folds each fold tests 6
actors, 3 female and 3 male (fold 1: actors 1 2 9 10 17 18), 360 clips in 8class.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from data_prep.common import (
    PrepError,
    base_parser,
    check_counts,
    corpus_summary,
    entry_from_header,
    logger,
    require_headers,
    run_main,
    write_prepared,
)
from emotion_ssl.data.manifest import ManifestEntry

NAME = re.compile(r"^(0[1-3])-(0[12])-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d\d)$")
EMOTIONS = {
    "01": "neu",
    "02": "cal",
    "03": "hap",
    "04": "sad",
    "05": "ang",
    "06": "fea",
    "07": "dis",
    "08": "sur",
}
FOUR_CLASS = ("neu", "hap", "ang", "sad")
EXPECTED_8CLASS = {label: 96 if label == "neu" else 192 for label in EMOTIONS.values()}
NUM_ACTORS = 24


def find_clips(root: Path) -> tuple[list[tuple[Path, re.Match[str]]], int]:
    """Speech clips under Actor_NN/ with their parsed names, and the number of song clips."""
    actor_dirs = sorted(d for d in root.glob("Actor_[0-9][0-9]") if d.is_dir())
    if not actor_dirs:
        nested = sorted(root.glob("*/Actor_[0-9][0-9]"))
        hint = f" (did you mean --root {nested[0].parent}?)" if nested else ""
        raise PrepError(f"{root} is not a RAVDESS folder: no Actor_NN sub-folders{hint}")
    clips, bad, songs = [], [], 0
    seen: dict[str, Path] = {}
    for folder in actor_dirs:
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() not in (".wav", ".flac"):
                continue
            match = NAME.match(path.stem)
            if match is None or match.group(7) != folder.name[-2:]:
                bad.append(str(path.relative_to(root)))
                continue
            if match.group(1) != "03" or match.group(2) != "01":
                songs += match.group(2) == "02"
                continue  # video or song modalities: not this corpus' speech set
            if path.stem in seen:
                raise PrepError(f"clip {path.stem} is there twice: {seen[path.stem]} and {path}")
            seen[path.stem] = path
            clips.append((path, match))
    if bad:
        raise PrepError(
            f"{len(bad)} file(s) are not named MM-VV-EE-II-SS-RR-AA after their Actor_NN "
            f"folder: {', '.join(bad[:10])}"
        )
    return clips, songs


def prepare_ravdess(
    root: Path,
    out_dir: Path,
    *,
    label_set: str = "8class",
    num_folds: int = 4,
    allow_count_mismatch: bool = False,
    relative: bool = False,
    num_workers: int = 8,
) -> list[ManifestEntry]:
    if label_set not in ("8class", "4class"):
        raise PrepError(f"unknown --label-set {label_set!r}; use 8class or 4class")
    if not 2 <= num_folds <= NUM_ACTORS // 2:
        raise PrepError(f"--num-folds must be in [2, {NUM_ACTORS // 2}], got {num_folds}")
    clips, songs = find_clips(root)
    if songs:
        logger.info("skipped %d song clips (vocal channel 02)", songs)
    found = Counter(EMOTIONS[m.group(3)] for _, m in clips)
    actors = {int(m.group(7)) for _, m in clips}
    check_counts(
        {**found, "actors": len(actors)},
        {**EXPECTED_8CLASS, "actors": NUM_ACTORS},
        "RAVDESS speech clip",
        allow_count_mismatch,
    )
    if label_set == "4class":
        clips = [(p, m) for p, m in clips if EMOTIONS[m.group(3)] in FOUR_CLASS]

    headers = require_headers([p for p, _ in clips], num_workers, "RAVDESS")
    entries = []
    for path, match in clips:
        actor = int(match.group(7))
        entries.append(
            entry_from_header(
                headers[path],
                path.stem,
                out_dir,
                corpus="ravdess",
                speaker=f"Actor_{actor:02d}",
                label=EMOTIONS[match.group(3)],
                relative=relative,
                extra={
                    "actor": actor,
                    "gender": "F" if actor % 2 == 0 else "M",
                    "intensity": "normal" if match.group(4) == "01" else "strong",
                    "statement": int(match.group(5)),
                    "repetition": int(match.group(6)),
                    # pairs (1,2), (3,4)... keep every fold half female, half male
                    "fold": (actor - 1) // 2 % num_folds + 1,
                },
            )
        )
    summary = corpus_summary(
        entries,
        corpus="ravdess",
        options={"label_set": label_set, "num_folds": num_folds, "relative_paths": relative},
        fold_fields=("fold",),
        notes={"song_clips_skipped": songs},
    )
    write_prepared(out_dir, entries, summary)
    return entries


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(__doc__ or "", "the RAVDESS folder holding Actor_01 ... Actor_24")
    parser.add_argument("--label-set", choices=("8class", "4class"), default="8class")
    parser.add_argument("--num-folds", type=int, default=4)
    parser.add_argument("--allow-count-mismatch", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def prepare(args: argparse.Namespace) -> None:
        prepare_ravdess(
            args.root,
            args.out,
            label_set=args.label_set,
            num_folds=args.num_folds,
            allow_count_mismatch=args.allow_count_mismatch,
            relative=args.relative_paths,
            num_workers=args.workers,
        )

    return run_main(prepare, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
