"""Tests for models._files: the atomic writer of bundles and checkpoints."""

from __future__ import annotations

import pytest
import torch

from models._files import atomic_torch_save, atomic_write, atomic_write_text


def test_atomic_write_text_replaces_the_file(tmp_path):
    path = tmp_path / "card.json"
    path.write_text("old")
    assert atomic_write_text(path, "new\n") == path
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_atomic_torch_save_round_trips(tmp_path):
    path = atomic_torch_save(tmp_path / "w.pt", {"a": torch.arange(3)})
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(3))


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"old")

    def fail(fh):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]
