"""Atomic writes survive interruption; cache keys are stable and sensitive; bad files fail clearly."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from gcd_lightning.utils.files import load_json, load_torch, save_json, save_torch
from gcd_lightning.utils.hashing import file_hash, spec_hash


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "set.pt"
    save_torch({"x": torch.arange(3)}, path)

    def crash(obj, f):
        with open(f, "wb") as handle:
            handle.write(b"half a tens")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_torch({"x": torch.arange(5)}, path)
    monkeypatch.undo()
    assert torch.equal(load_torch(path, "set")["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["set.pt"]


def test_interrupted_first_write_leaves_nothing(tmp_path, monkeypatch):
    def crash(obj, f):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_torch({"x": 1}, tmp_path / "new.pt")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_and_missing_files_name_the_fix(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="corrupt.*delete it and rerun"):
        load_torch(bad, "cached classifier weights")
    with pytest.raises(FileNotFoundError, match="cached classifier weights not found"):
        load_torch(tmp_path / "missing.pt", "cached classifier weights")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RuntimeError, match="corrupt"):
        load_json(tmp_path / "bad.json", "summary")


def test_json_round_trip(tmp_path):
    save_json({"b": 1, "a": [1.5, "x"]}, tmp_path / "m.json")
    assert load_json(tmp_path / "m.json", "m") == {"a": [1.5, "x"], "b": 1}


def test_spec_hash_is_order_free_and_sensitive():
    assert spec_hash({"a": 1, "b": {"c": 2}}) == spec_hash({"b": {"c": 2}, "a": 1})
    assert spec_hash({"a": 1, "b": {"c": 2}}) != spec_hash({"a": 1, "b": {"c": 3}})


def test_file_hash_follows_content(tmp_path):
    (tmp_path / "a").write_bytes(b"weights")
    (tmp_path / "b").write_bytes(b"weights")
    (tmp_path / "c").write_bytes(b"weightz")
    assert file_hash(tmp_path / "a") == file_hash(tmp_path / "b") != file_hash(tmp_path / "c")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_users_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_json({"a": 1}, tmp_path / "summary.json")
        save_torch({"x": torch.arange(3)}, tmp_path / "set.pt")
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {mode}
