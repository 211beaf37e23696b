"""The output-folder record: resume the same work, refuse other work, replace only our files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emotion_ssl.utils.outputs import (
    OutputError,
    claim_output_dir,
    file_identity,
    path_identity,
    read_record,
    tensors_identity,
)

torch.set_num_threads(1)


def test_same_record_resumes_other_record_is_refused_or_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert (
        claim_output_dir(out, "extract", {"layer": -1}, ["index.jsonl", "frames"]).status == "new"
    )
    (out / "frames").mkdir()
    (out / "frames" / "a.npy").write_bytes(b"ours")
    (out / "index.jsonl").write_text("ours\n")
    (out / "notes.txt").write_text("the user's")
    again = claim_output_dir(out, "extract", {"layer": -1}, ["index.jsonl", "frames"])
    assert again.status == "resumed" and (out / "index.jsonl").exists()
    with pytest.raises(OutputError, match=r"other inputs or settings \(layer: -1 -> 0\)"):
        claim_output_dir(out, "extract", {"layer": 0}, ["index.jsonl", "frames"])
    with pytest.raises(OutputError, match="written by `emotion-ssl extract`"):
        claim_output_dir(out, "export", {"layer": -1}, ["model.safetensors"])
    replaced = claim_output_dir(
        out, "extract", {"layer": 0}, ["index.jsonl", "frames"], overwrite=True
    )
    assert replaced.status == "replaced"
    assert sorted(p.name for p in out.iterdir()) == ["emotion-ssl.json", "notes.txt"]
    assert (read_record(out) or {})["identity"] == {"layer": 0}
    # a cache replaces itself when what it was computed from changed
    cache = claim_output_dir(out, "extract", {"layer": 1}, ["index.jsonl"], replace_changed=True)
    assert cache.status == "replaced"


def test_a_file_where_a_folder_should_be_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        claim_output_dir(tmp_path / "f", "export", {}, ["config.json"], overwrite=True)


def test_identities_follow_content_not_names(tmp_path: Path) -> None:
    state = {"w": torch.arange(4.0), "b": torch.zeros(2, dtype=torch.bfloat16)}
    same = {"b": torch.zeros(2, dtype=torch.bfloat16), "w": torch.arange(4.0)}
    assert tensors_identity({"d": 4}, state) == tensors_identity({"d": 4}, same)
    assert tensors_identity({"d": 4}, state) != tensors_identity({"d": 5}, state)
    changed = {**state, "w": torch.arange(4.0) + 1e-6}
    assert tensors_identity({"d": 4}, state) != tensors_identity({"d": 4}, changed)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"1")
    before = path_identity(tmp_path / "d")
    (tmp_path / "d" / "a").write_bytes(b"2")
    assert path_identity(tmp_path / "d") != before
    assert path_identity(tmp_path / "d" / "a") == file_identity(tmp_path / "d" / "a")
