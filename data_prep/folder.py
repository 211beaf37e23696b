"""Any folder of audio -> manifest, plus a report of every file that could not be used.

    python -m data_prep.folder --root /data/my_speech --out manifests/my_speech

Walks `--root` (wav, flac, ogg, mp3 where libsndfile reads them; hidden files skipped),
reads every header in parallel threads, and writes into `--out`:

    manifest.jsonl   the usable files (key = path below the root without its suffix)
    report.json      counts, and every rejected file with its reason and detail
    report.md        the same for people: a summary and a table of rejected files

Reasons a file is rejected:

    unreadable     libsndfile cannot open it (corrupt, truncated header, unknown format),
                   or with --decode the samples cannot be decoded
    truncated      the header promises more audio than the file holds (a copy cut short;
                   WAV from the header, any format with --decode)
    empty          a 0-byte file or a header with no samples
    too_short      shorter than --min-seconds
    channels       more than --max-channels channels
    sample_rate    below --min-rate or above --max-rate Hz
    duplicate_key  another file with the same path but a different suffix came first

Files at another rate than 16 kHz, or with 2 channels, are usable: they are resampled and
down-mixed at load time (`emotion_ssl.data.load_audio`), and the report counts them. The
scan never stops for a bad file; it exits 1 only when no file at all is usable.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.common import (
    HeaderFailure,
    HeaderInfo,
    PrepError,
    base_parser,
    entry_from_header,
    logger,
    read_headers,
    run_main,
    write_json,
)
from emotion_ssl.data.audio import TARGET_RATE, AudioReadError, load_audio, resampled_length
from emotion_ssl.data.manifest import ManifestEntry, write_manifest, write_text_atomically

AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "mp3")
REASONS = (
    "unreadable",
    "truncated",
    "empty",
    "too_short",
    "channels",
    "sample_rate",
    "duplicate_key",
)


@dataclass(frozen=True)
class Rejected:
    path: str
    """Below the root, POSIX separators."""
    reason: str
    """One of REASONS."""
    detail: str


@dataclass
class FolderScan:
    """The outcome of a scan: usable entries, rejected files, and counts for the report."""

    entries: list[ManifestEntry]
    rejected: list[Rejected]
    scanned: int
    hidden_skipped: int
    needs_resampling: int
    needs_downmix: int

    def report(self, root: Path, options: dict[str, Any]) -> dict[str, Any]:
        rates = Counter(e.sample_rate for e in self.entries)
        return {
            "root": os.path.abspath(root),
            "options": options,
            "scanned": self.scanned,
            "usable": len(self.entries),
            "rejected": len(self.rejected),
            "hidden_skipped": self.hidden_skipped,
            "usable_hours": round(sum(e.duration for e in self.entries) / 3600, 4),
            "needs_resampling": self.needs_resampling,
            "needs_downmix": self.needs_downmix,
            "sample_rates": {str(rate): n for rate, n in sorted(rates.items())},
            "rejected_by_reason": {
                reason: n
                for reason in REASONS
                if (n := sum(r.reason == reason for r in self.rejected))
            },
            "rejected_files": [
                {"path": r.path, "reason": r.reason, "detail": r.detail} for r in self.rejected
            ],
        }


def find_audio_files(root: Path, extensions: Sequence[str]) -> tuple[list[Path], int]:
    """Audio files below `root` in sorted order, and how many hidden ones were skipped."""
    wanted = {"." + ext.lower().lstrip(".") for ext in extensions}
    found: list[Path] = []
    hidden = 0
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            if Path(name).suffix.lower() not in wanted:
                continue
            if name.startswith("."):
                hidden += 1  # e.g. macOS "._x.wav" resource forks
                continue
            found.append(Path(folder) / name)
    return found, hidden


def _problem(
    info: HeaderInfo,
    min_seconds: float,
    max_channels: int,
    min_rate: int,
    max_rate: int,
) -> tuple[str, str] | None:
    if info.num_samples <= 0:
        return "empty", "header reports no audio samples"
    if info.channels > max_channels:
        return "channels", f"{info.channels} channels (at most {max_channels} accepted)"
    if not min_rate <= info.sample_rate <= max_rate:
        return "sample_rate", f"{info.sample_rate} Hz (accepted: {min_rate}-{max_rate} Hz)"
    if info.duration < min_seconds:
        return "too_short", f"{info.duration:.3f} s (minimum {min_seconds} s)"
    return None


def scan_folder(
    root: Path,
    out_dir: Path,
    *,
    corpus: str,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    min_seconds: float = 0.5,
    max_channels: int = 2,
    min_rate: int = TARGET_RATE,
    max_rate: int = 192_000,
    speaker_level: int | None = None,
    decode: bool = False,
    relative: bool = False,
    num_workers: int = 8,
) -> FolderScan:
    """Scan `root`; see the module docstring. Never raises for a bad audio file."""
    if not root.is_dir():
        raise PrepError(f"--root {root} is not a folder")
    paths, hidden = find_audio_files(root, extensions)
    headers = read_headers(paths, num_workers)
    if decode:
        headers = _decode_check(headers, num_workers)

    entries: list[ManifestEntry] = []
    rejected: list[Rejected] = []
    first_path_of_key: dict[str, str] = {}
    resample = downmix = 0
    for result in headers:
        relative_path = result.path.relative_to(root)
        shown = relative_path.as_posix()
        if isinstance(result, HeaderFailure):
            rejected.append(Rejected(shown, result.reason, result.detail))
            continue
        problem = _problem(result, min_seconds, max_channels, min_rate, max_rate)
        if problem is not None:
            rejected.append(Rejected(shown, *problem))
            continue
        key = relative_path.with_suffix("").as_posix()
        if key in first_path_of_key:
            rejected.append(
                Rejected(
                    shown, "duplicate_key", f"key {key!r} already used by {first_path_of_key[key]}"
                )
            )
            continue
        first_path_of_key[key] = shown
        parts = relative_path.parent.parts
        speaker = (
            parts[speaker_level]
            if speaker_level is not None and len(parts) > speaker_level
            else None
        )
        resample += result.sample_rate != TARGET_RATE
        downmix += result.channels > 1
        entries.append(
            entry_from_header(
                result,
                key,
                out_dir,
                corpus=corpus,
                speaker=speaker,
                label=None,
                relative=relative,
                extra={"channels": result.channels} if result.channels > 1 else None,
            )
        )
    return FolderScan(entries, rejected, len(paths), hidden, resample, downmix)


def _decode_check(
    headers: list[HeaderInfo | HeaderFailure], num_workers: int
) -> list[HeaderInfo | HeaderFailure]:
    """Decode every readable file fully; one that fails becomes an "unreadable" failure."""
    from concurrent.futures import ThreadPoolExecutor

    def check(result: HeaderInfo | HeaderFailure) -> HeaderInfo | HeaderFailure:
        if isinstance(result, HeaderFailure) or result.num_samples == 0:
            return result
        try:
            audio = load_audio(result.path)
        except AudioReadError as e:
            return HeaderFailure(result.path, "unreadable", e.reason)
        except Exception as e:  # never stop the scan
            return HeaderFailure(result.path, "unreadable", f"{type(e).__name__}: {e}")
        expected = resampled_length(result.num_samples, result.sample_rate, TARGET_RATE)
        if len(audio) < expected:
            return HeaderFailure(
                result.path,
                "truncated",
                f"the header says {result.duration:.3f} s, {len(audio) / TARGET_RATE:.3f} s "
                "decode (cut short: copy it again)",
            )
        return result

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        return list(pool.map(check, headers))


def markdown_report(report: dict[str, Any]) -> str:
    lines = [
        f"# Audio scan of `{report['root']}`",
        "",
        f"- files scanned: {report['scanned']} (hidden files skipped: {report['hidden_skipped']})",
        f"- usable: {report['usable']} ({report['usable_hours']} h)",
        f"- rejected: {report['rejected']}",
        f"- usable files resampled to 16 kHz at load time: {report['needs_resampling']}",
        f"- usable files down-mixed to mono at load time: {report['needs_downmix']}",
        "- sample rates of usable files: "
        + (", ".join(f"{r} Hz: {n}" for r, n in report["sample_rates"].items()) or "none"),
        "",
    ]
    if report["rejected_files"]:
        lines += ["## Rejected files", "", "| file | reason | detail |", "|---|---|---|"]
        for r in report["rejected_files"]:
            detail = r["detail"].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{r['path']}` | {r['reason']} | {detail} |")
        lines.append("")
    return "\n".join(lines)


def prepare(args: argparse.Namespace) -> FolderScan:
    out_dir: Path = args.out
    corpus = args.corpus or out_dir.absolute().name
    options = {
        "corpus": corpus,
        "extensions": list(args.extensions),
        "min_seconds": args.min_seconds,
        "max_channels": args.max_channels,
        "min_rate": args.min_rate,
        "max_rate": args.max_rate,
        "speaker_level": args.speaker_level,
        "decode": args.decode,
        "relative_paths": args.relative_paths,
    }
    scan = scan_folder(
        args.root,
        out_dir,
        corpus=corpus,
        extensions=args.extensions,
        min_seconds=args.min_seconds,
        max_channels=args.max_channels,
        min_rate=args.min_rate,
        max_rate=args.max_rate,
        speaker_level=args.speaker_level,
        decode=args.decode,
        relative=args.relative_paths,
        num_workers=args.workers,
    )
    report = scan.report(args.root, options)
    write_manifest(out_dir / "manifest.jsonl", scan.entries, skip_unchanged=True)
    write_json(out_dir / "report.json", report)
    write_text_atomically(out_dir / "report.md", markdown_report(report), skip_unchanged=True)
    logger.info(
        "%s: %d of %d files usable (%.2f h); %d rejected %s; %d to resample, %d to down-mix; "
        "see %s",
        out_dir / "manifest.jsonl",
        report["usable"],
        report["scanned"],
        report["usable_hours"],
        report["rejected"],
        report["rejected_by_reason"],
        report["needs_resampling"],
        report["needs_downmix"],
        out_dir / "report.md",
    )
    if not scan.entries:
        raise PrepError(f"no usable audio file under {args.root}; see {out_dir / 'report.md'}")
    return scan


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(__doc__ or "", "folder to scan (recursively)")
    parser.add_argument("--corpus", help="corpus name in the manifest (default: --out's name)")
    parser.add_argument(
        "--extensions",
        type=lambda s: [e for e in s.split(",") if e],
        default=list(AUDIO_EXTENSIONS),
        help="comma-separated suffixes (default: wav,flac,ogg,mp3)",
    )
    parser.add_argument("--min-seconds", type=float, default=0.5)
    parser.add_argument("--max-channels", type=int, default=2)
    parser.add_argument("--min-rate", type=int, default=TARGET_RATE)
    parser.add_argument("--max-rate", type=int, default=192_000)
    parser.add_argument(
        "--speaker-level",
        type=int,
        default=None,
        help="speaker = this folder level below the root (0 = first), e.g. 0 for "
        "LibriSpeech's speaker/chapter/file layout",
    )
    parser.add_argument(
        "--decode", action="store_true", help="also decode every file (slow; finds truncation)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(prepare, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
