"""model/checkpoint.py: the load takes what the peek read, and never a stale copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from resnext_cli.errors import CheckpointError
from resnext_cli.model import checkpoint as ckpt


def _learned(path: Path, names: list[str], *, seed: int) -> Path:
    """A small file in the layout 'resnext learn' writes: a state dict and class names."""
    torch.manual_seed(seed)
    state = {"fc.weight": torch.randn(len(names), 4), "fc.bias": torch.randn(len(names))}
    torch.save({"state_dict": state, ckpt.CLASSES_KEY: names}, path)
    return path


def test_a_checkpoint_changed_after_the_peek_is_read_anew(
    loads: list[object], tmp_path: Path
) -> None:
    path = _learned(tmp_path / "learned.pth", ["cat", "dog"], seed=1)
    assert ckpt.stored_classes(path) == ("cat", "dog")
    # Replaced between the peek and the load, as 'resnext learn --force' publishes it.
    newer = _learned(tmp_path / "newer.pth", ["ant", "bee", "cow"], seed=2)
    expected = torch.load(newer, weights_only=True)["state_dict"]
    loads.clear()
    os.replace(newer, path)
    state = ckpt.read_state_dict(path, name="learned.pth")
    assert len(loads) == 1
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_the_load_takes_what_the_peek_read_and_keeps_nothing(
    loads: list[object], tmp_path: Path
) -> None:
    path = _learned(tmp_path / "learned.pth", ["cat", "dog"], seed=1)
    assert ckpt.stored_classes(path) == ("cat", "dog")
    assert ckpt.stored_classes(path) == ("cat", "dog")  # a second peek: still the one read
    first = ckpt.read_state_dict(path, name="learned.pth")
    assert len(loads) == 1
    # Taken by that load: the next one reads the file again rather than hold the weights.
    second = ckpt.read_state_dict(path, name="learned.pth")
    assert len(loads) == 2
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_file_the_peek_cannot_read_is_refused_by_the_load(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_bytes(b"not a checkpoint")
    assert ckpt.stored_classes(path) is None
    with pytest.raises(CheckpointError) as info:
        ckpt.read_state_dict(path, name="notes.pth")
    assert str(info.value).startswith("cannot load checkpoint 'notes.pth': ")
