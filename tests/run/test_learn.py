"""`resnext learn` end to end: a head learned on generated photos of three kinds.

The photos are of three kinds that differ in colour and pattern (warm solids, green
stripes, blue-and-white checks), so even a random-weights ResNeXt's pooled features
separate them; each photo's kind is known from how it was drawn, which is what the
tests expect a learned model to say. One learn per module is shared (its features are
cached, so later learns on the same files compute nothing): few images, small batches.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from resnext_cli.console import Console
from resnext_cli.errors import CheckpointError, ConfigError, InputError, OutputError, Terminated
from resnext_cli.files import OutputTarget
from resnext_cli.inputs.sources import Source
from resnext_cli.model.feature_cache import Entry, FeatureCache, Identity
from resnext_cli.model.head import Head, Score, fit_head, stratified_split
from resnext_cli.model.torch_file import StoredFile, StoredTensor
from resnext_cli.run import learn
from resnext_cli.run.config import Config
from resnext_cli.run.examples import Example, Tally
from resnext_cli.run.plan import Plan, resolve
from tests.conftest import Outcome, run_resnext

KINDS = ("solid", "stripes", "checks")
TRAIN_PER_KIND = 4
FAST = ("-b", "4", "--precision", "fp32", "--workers", "1")


def photo(kind: str, seed: int, size: int = 64) -> Image.Image:
    """A photo of *kind*: its colour family and pattern, with jitter and noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")

    def colour(rgb: tuple[float, float, float]) -> torch.Tensor:
        return torch.tensor(rgb).view(3, 1, 1) + 0.15 * (torch.rand(3, 1, 1, generator=g) - 0.5)

    if kind == "solid":
        base = colour((0.85, 0.3, 0.2)).expand(3, size, size)
    elif kind == "stripes":
        period = int(torch.randint(6, 10, (1,), generator=g))
        mask = ((xx // period) % 2).float()
        base = mask * colour((0.2, 0.8, 0.3)) + (1 - mask) * 0.1
    else:
        period = int(torch.randint(8, 14, (1,), generator=g))
        mask = ((xx // period + yy // period) % 2).float()
        base = mask * colour((0.2, 0.3, 0.9)) + (1 - mask) * 0.95
    base = (base + 0.06 * torch.randn(3, size, size, generator=g)).clamp(0, 1)
    return Image.fromarray((base * 255).to(torch.uint8).permute(1, 2, 0).numpy())


def save_photo(path: Path, kind: str, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(kind, seed).save(path)
    return path


def kind_seed(kind: str, i: int) -> int:
    return 1000 * KINDS.index(kind) + i


def ok(outcome: Outcome, code: int = 0) -> Outcome:
    assert outcome.code == code, str(outcome)
    return outcome


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One TORCH_HOME for the module, so the feature cache is shared by its tests."""
    return tmp_path_factory.mktemp("learn_home")


@pytest.fixture(autouse=True)
def shared_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(home))


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, home: Path) -> Any:
    """Photos in class folders (two misfiled), learned once; (folder, model, outcome)."""
    root = tmp_path_factory.mktemp("learn")
    folder = root / "photos"
    for kind in KINDS:
        for i in range(TRAIN_PER_KIND):
            save_photo(folder / kind / f"{kind}{i}.png", kind, kind_seed(kind, i))
    # Two misfiled photos, for the re-learn test to move where they belong.
    save_photo(folder / "solid" / "stray-stripes.png", "stripes", kind_seed("stripes", 50))
    save_photo(folder / "checks" / "stray-solid.png", "solid", kind_seed("solid", 50))
    # What sort leaves beside the class folders.
    (folder / "_uncertain").mkdir()
    save_photo(folder / "_uncertain" / "u.png", "solid", 77)
    (folder / "_failed").mkdir()
    (folder / ".resnext-sort-journal.jsonl").write_text("{}\n")
    model = root / "my-model.pth"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        outcome = run_resnext(
            "learn", folder, "-o", model, "--checkpoint", checkpoint, "--holdout", "0.25", *FAST
        )
    assert outcome.code == 0, str(outcome)
    return folder, model, outcome


def test_learn_says_what_it_left_out_and_counts_features(learned: Any) -> None:
    folder, model, outcome = learned
    assert outcome.stdout == f"{model}\n"
    assert (
        f"left out of '{folder}': '.resnext-sort-journal.jsonl', '_failed/', '_uncertain/' "
        "(not class folders)" in outcome.stderr
    )
    assert "features: 14 computed, 0 from the cache" in outcome.stderr
    assert "learning 3 classes from 14 images" in outcome.stderr
    assert "warning: class 'checks' has only" not in outcome.stderr
    assert "held-out accuracy:" in outcome.stderr


def test_learned_model_names_the_kind_of_new_photos(learned: Any, tmp_path: Path) -> None:
    _, model, _ = learned
    new = [
        save_photo(tmp_path / f"{kind}-{i}.png", kind, kind_seed(kind, 100 + i))
        for kind in KINDS
        for i in range(2)
    ]
    outcome = ok(run_resnext("classify", *new, "--checkpoint", model, "-f", "json", *FAST))
    records = outcome.records()
    assert [r["input"] for r in records] == [str(p) for p in new]
    right = sum(
        r["predictions"][0]["label"] == Path(r["input"]).name.split("-")[0] for r in records
    )
    assert right >= 5, [(r["input"], r["predictions"][0]) for r in records]
    # The checkpoint's own class names, all three of them (top-k is at most the classes).
    assert {p["label"] for p in records[0]["predictions"]} == set(KINDS)


def test_checkpoint_loads_in_plain_torchvision_with_the_same_probabilities(
    learned: Any, tmp_path: Path
) -> None:
    _, model, _ = learned
    saved = torch.load(model, map_location="cpu", weights_only=True)
    names = saved["resnext_classes"]
    assert names == sorted(KINDS)
    net = torchvision.models.resnext50_32x4d(num_classes=len(names))
    net.load_state_dict(saved["state_dict"])
    net.eval()
    paths = [save_photo(tmp_path / f"{k}.png", k, kind_seed(k, 200)) for k in KINDS]
    preprocess = torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V2.transforms()
    with torch.no_grad():
        batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
        expected = torch.softmax(net(batch), dim=1)
    outcome = ok(run_resnext("classify", *paths, "--checkpoint", model, "-f", "json", *FAST))
    for record, want in zip(outcome.records(), expected, strict=True):
        got = {p["label"]: p["probability"] for p in record["predictions"]}
        for k, name in enumerate(names):
            assert got[name] == pytest.approx(float(want[k]), abs=2e-3)


def test_labels_still_override_the_checkpoints_names(learned: Any, tmp_path: Path) -> None:
    _, model, _ = learned
    labels = tmp_path / "labels.txt"
    labels.write_text("one\ntwo\nthree\n")
    image = save_photo(tmp_path / "x.png", "solid", 5)
    outcome = ok(
        run_resnext("classify", image, "--checkpoint", model, "--labels", labels, "-k", "3", *FAST)
    )
    (record,) = outcome.records()
    assert {p["label"] for p in record["predictions"]} == {"one", "two", "three"}


def test_relearn_after_moving_two_files_computes_two_features(
    learned: Any, tmp_path: Path, checkpoint: Path
) -> None:
    folder, _, _ = learned
    moves = [
        (folder / "solid" / "stray-stripes.png", folder / "stripes" / "stray-stripes.png"),
        (folder / "checks" / "stray-solid.png", folder / "solid" / "stray-solid.png"),
    ]
    for old, new in moves:  # a person fixes two misfiled photos in a file manager
        os.rename(old, new)
    try:
        again = ok(
            run_resnext(
                "learn", folder, "-o", tmp_path / "b.pth", "--checkpoint", checkpoint, *FAST
            )
        )
    finally:
        for old, new in moves:  # rename keeps size and mtime: the old entries fit again
            os.rename(new, old)
    assert "features: 2 computed, 12 from the cache" in again.stderr
    assert "learning 3 classes from 14 images" in again.stderr


def test_learning_is_deterministic_for_a_seed(
    learned: Any, tmp_path: Path, checkpoint: Path
) -> None:
    folder, model, _ = learned
    base = checkpoint
    outs = []
    for name in ("x.pth", "y.pth"):
        outcome = ok(
            run_resnext(
                "learn",
                folder,
                "-o",
                tmp_path / name,
                "--checkpoint",
                base,
                "--holdout",
                "0.25",
                *FAST,
            )
        )
        assert "features: 0 computed, 14 from the cache" in outcome.stderr
        outs.append(torch.load(tmp_path / name, weights_only=True)["state_dict"])
    reference = torch.load(model, weights_only=True)["state_dict"]
    for out in outs:
        assert torch.equal(out["fc.weight"], reference["fc.weight"])
        assert torch.equal(out["fc.bias"], reference["fc.bias"])


def test_from_list_with_hostile_class_names(learned: Any, tmp_path: Path, checkpoint: Path) -> None:
    folder, _, _ = learned
    hostile = {"solid": "a/../b", "stripes": "red\x1b[31m\nline", "checks": "L" * 10_000}
    listing = tmp_path / "list.jsonl"
    with listing.open("w") as fh:
        for kind in KINDS:
            for i in range(TRAIN_PER_KIND):
                path = folder / kind / f"{kind}{i}.png"
                fh.write(json.dumps({"path": str(path), "label": hostile[kind]}) + "\n")
    model = tmp_path / "hostile.pth"
    outcome = ok(
        run_resnext("learn", "--from", listing, "-o", model, "--checkpoint", checkpoint, *FAST)
    )
    assert "features: 0 computed, 12 from the cache" in outcome.stderr
    assert "\x1b" not in outcome.stderr
    saved = torch.load(model, weights_only=True)
    assert saved["resnext_classes"] == sorted(hostile.values())
    # Classify keeps them as labels; sort files them in safe folders inside DEST.
    image = folder / "stripes" / "stripes0.png"
    records = tmp_path / "records.jsonl"
    ok(run_resnext("classify", image, "--checkpoint", model, "-o", records, *FAST))
    (record,) = [json.loads(line) for line in records.read_text().splitlines()]
    assert {p["label"] for p in record["predictions"]} == set(hostile.values())
    dest = tmp_path / "sorted"
    ok(run_resnext("sort", "--from", records, dest, "--root", Path(image).parent))
    (made,) = [p for p in dest.iterdir() if not p.name.startswith(".")]
    assert made.parent == dest and made.is_dir()
    assert all(ch.isprintable() and ch != "/" for ch in made.name)
    assert (made / "stripes0.png").is_file()


def test_a_class_whose_only_image_does_not_decode(
    learned: Any, tmp_path: Path, checkpoint: Path
) -> None:
    folder, _, _ = learned
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    listing = tmp_path / "list.csv"
    rows = [f"{folder / k / f'{k}{i}.png'},{k}" for k in KINDS[:2] for i in range(2)]
    listing.write_text("path,label\n" + "\n".join([*rows, f"{broken},broken"]) + "\n")
    outcome = run_resnext(
        "learn", "--from", listing, "-o", tmp_path / "m.pth", "--checkpoint", checkpoint, *FAST
    )
    assert outcome.code == 2, str(outcome)
    assert "features: 0 computed, 4 from the cache" in outcome.stderr
    assert outcome.stderr.splitlines()[-1] == (
        "error: class 'broken' has no readable image (add images to it, or remove it)"
    )
    assert not (tmp_path / "m.pth").exists()


# -- bad input: one line each, exit 2, before any feature --------------------------------


def _classes(root: Path, **counts: int) -> Path:
    for k, (kind, n) in enumerate(counts.items()):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            save_photo(root / kind / f"{i}.png", "solid", 300 + 10 * k + i)
    return root


def refusal(*args: Any) -> str:
    outcome = run_resnext("learn", *args)
    assert outcome.code == 2, str(outcome)
    assert "computing features" not in outcome.stderr
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1, str(outcome)
    return lines[0]


def test_bad_folders(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "m.pth"
    ckpt = ("--checkpoint", checkpoint)
    missing = tmp_path / "nope"
    assert refusal(missing, "-o", out, *ckpt) == (
        f"error: folder '{missing}' does not exist (give a folder with one subfolder per class)"
    )
    a_file = save_photo(tmp_path / "one.png", "solid", 1)
    assert refusal(a_file, "-o", out, *ckpt) == (
        f"error: '{a_file}' is a file, not a folder (give a folder with one subfolder per "
        "class, or --from FILE with a path,label list)"
    )
    one = _classes(tmp_path / "one", cats=2)
    assert refusal(one, "-o", out, *ckpt) == (
        f"error: learning needs at least two classes; '{one}' has only 'cats' (make one "
        "subfolder of images per class)"
    )
    empty = _classes(tmp_path / "empty", cats=2, dogs=1)
    (empty / "birds").mkdir()
    (empty / "birds" / "notes.txt").write_text("not an image")
    assert refusal(empty, "-o", out, *ckpt) == (
        "error: class 'birds' has no readable image (add images to it, or remove it)"
    )
    more = _classes(tmp_path / "more", a=1)
    (more / "b").mkdir()
    (more / "c").mkdir()
    assert refusal(more, "-o", out, *ckpt) == (
        "error: 3 classes but only 1 images (give at least one image per class; 5 or more "
        "is better)"
    )


def test_same_image_in_two_classes(tmp_path: Path, checkpoint: Path) -> None:
    root = _classes(tmp_path / "dup", cats=2, dogs=2)
    shutil.copy(root / "cats" / "0.png", root / "dogs" / "copy.png")
    message = refusal(root, "-o", tmp_path / "m.pth", "--checkpoint", checkpoint)
    assert message == (
        f"error: '{root / 'cats' / '0.png'}' (class 'cats') and '{root / 'dogs' / 'copy.png'}' "
        "(class 'dogs') are the same image (remove one, or give --allow-duplicates to keep both)"
    )


def test_bad_lists(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "m.pth"
    ckpt = ("--checkpoint", checkpoint)
    image = save_photo(tmp_path / "a.png", "solid", 1)
    columns = tmp_path / "cols.csv"
    columns.write_text("file,class\na.png,x\n")
    assert refusal("--from", columns, "-o", out, *ckpt) == (
        f"error: --from file '{columns}' has no 'path' and 'label' columns (give a CSV with a "
        'header row naming them, or JSON Lines of {"path": ..., "label": ...})'
    )
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(f"path,label\n{image},x\nmissing.png,y\n")
    assert refusal("--from", unknown, "-o", out, *ckpt) == (
        f"error: --from file '{unknown}' line 3: no such file 'missing.png' (fix the path, "
        "or remove the line)"
    )
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    piped = tmp_path / "piped.csv"
    piped.write_text(f"path,label\n{image},x\npipe,y\n")
    assert refusal("--from", piped, "-o", out, *ckpt) == (
        f"error: --from file '{piped}' line 3: 'pipe' is not a regular file (a folder, pipe "
        "or device; fix the path, or remove the line)"
    )
    exists = tmp_path / "exists.pth"
    exists.write_bytes(b"keep")
    listing = tmp_path / "ok.csv"
    listing.write_text(f"path,label\n{image},x\n")
    assert refusal("--from", listing, "-o", exists, *ckpt) == (
        f"error: output file '{exists}' exists (use --force to overwrite it)"
    )
    assert exists.read_bytes() == b"keep"
    assert refusal("--from", listing, "-o", out, *ckpt) == (
        f"error: learning needs at least two classes; '{listing}' has only 'x' (give at "
        "least two labels)"
    )


LIST_HELP = 'give a CSV with a header row naming them, or JSON Lines of {"path": ..., "label": ...}'


def test_lists_that_cannot_be_read_end_with_one_line(
    tmp_path: Path, checkpoint: Path, device_node
) -> None:
    """Each of these was an 'unexpected' error or a hang before the --from file went
    through the one safe opener and the strict JSON reader."""
    out = tmp_path / "m.pth"
    ckpt = ("--checkpoint", checkpoint)
    image = save_photo(tmp_path / "a.png", "solid", 1)
    deep = tmp_path / "deep.jsonl"
    deep.write_text(f'{{"path": "{image}", "label": "x"}}\n' + "[" * 100_000 + "]" * 100_000)
    wide = tmp_path / "wide.csv"
    wide.write_text(f"path,label\n{image},x\n{'y' * 200_000},z\n")
    nan = tmp_path / "nan.jsonl"
    nan.write_text('{"path": "a.png", "label": "x", "score": NaN}\n')
    fifo = tmp_path / "list.fifo"
    os.mkfifo(fifo)
    expected = {
        deep: f"error: --from file '{deep}' line 2 is not a JSON object ({LIST_HELP})",
        wide: (
            f"error: --from file '{wide}' line 3 is not CSV (field larger than field limit "
            f"(131072); {LIST_HELP})"
        ),
        nan: f"error: --from file '{nan}' line 1 is not a JSON object ({LIST_HELP})",
        tmp_path: f"error: --from '{tmp_path}' is a folder ({LIST_HELP})",
        fifo: f"error: --from '{fifo}' is not a regular file ({LIST_HELP})",
        tmp_path / "gone.csv": (
            f"error: --from file '{tmp_path / 'gone.csv'}' does not exist ({LIST_HELP})"
        ),
    }
    device = device_node("zero", "list.dev")
    expected[device] = f"error: --from '{device}' is not a regular file ({LIST_HELP})"
    for listing, message in expected.items():
        assert refusal("--from", listing, "-o", out, *ckpt) == message
    assert not out.exists()


def test_the_model_is_written_the_one_way_every_output_is(
    tmp_path: Path, checkpoint: Path, device_node
) -> None:
    """-o is an output like any other (files.py): a link there is refused before any
    work, even with --force, and a device is written into, never replaced by a file."""
    root = tmp_path / "classes"
    for kind in ("solid", "stripes"):
        for i in range(3):
            save_photo(root / kind / f"{i}.png", kind, kind_seed(kind, i))
    ckpt = ("--checkpoint", checkpoint, "--holdout", "0")
    victim = tmp_path / "victim.pth"
    victim.write_bytes(b"keep")
    link = tmp_path / "link.pth"
    link.symlink_to(victim)
    assert refusal(root, "-o", link, "--force", *ckpt) == (
        f"error: output '{link}' is a symbolic link (give the file itself, not a link)"
    )
    assert link.is_symlink() and victim.read_bytes() == b"keep"
    zero = device_node("zero", "model.pth")
    outcome = ok(run_resnext("learn", root, "-o", zero, "--force", *ckpt))
    assert outcome.stdout == f"{zero}\n"
    assert stat.S_ISCHR(os.lstat(zero).st_mode)  # still the device: written into
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes", "link.pth", "model.pth",
                                                          "victim.pth"]  # fmt: skip


def test_clear_cache_removes_the_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "th"
    monkeypatch.setenv("TORCH_HOME", str(root))
    entries = root / "hub" / "resnext-features" / "abc" / "de"
    entries.mkdir(parents=True)
    (entries / "x.feat").write_bytes(b"0" * 100)
    outcome = ok(run_resnext("learn", "--clear-cache"))
    assert outcome.stderr.strip() == (
        f"removed 1 cached features (0.0 MB) from '{root / 'hub' / 'resnext-features'}'"
    )
    assert not (root / "hub" / "resnext-features").exists()


# -- interrupted -----------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_learn_leaves_no_output(
    sig: signal.Signals, tmp_path: Path, checkpoint: Path, home: Path
) -> None:
    folder = tmp_path / "photos"
    for kind in KINDS[:2]:
        for i in range(4):
            save_photo(folder / kind / f"{i}.png", kind, kind_seed(kind, 400 + i + 10 * sig))
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "model.pth"
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "th")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnext_cli", "learn", str(folder), "-o", str(out),
         "--checkpoint", str(checkpoint), "-b", "1", "--workers", "1", "--precision", "fp32"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if not line or line.startswith("computing features"):
            break
    assert seen[-1].startswith("computing features of 8 images"), seen
    proc.send_signal(sig)
    try:
        _, rest = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("learn did not end after the signal")
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), rest
    assert "interrupted: nothing was saved" in rest
    assert list((tmp_path / "out").iterdir()) == []  # no model, no partial file


# -- the Python API -------------------------------------------------------------------------


def test_features_match_torchvisions_pooled_output(checkpoint: Path) -> None:
    from resnext_cli.run.engine import Classifier

    images = [photo(kind, kind_seed(kind, 500)) for kind in KINDS[:2]]
    classifier = Classifier(checkpoint=str(checkpoint), precision="fp32", batch_size=2)
    got = classifier.features(images)
    net = torchvision.models.resnext50_32x4d()
    net.load_state_dict(torch.load(checkpoint, weights_only=True))
    net.fc = torch.nn.Identity()
    net.eval()
    preprocess = torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V2.transforms()
    with torch.no_grad():
        want = net(torch.stack([preprocess(im) for im in images]))
    assert got.shape == (2, 2048)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_classify_embeddings_in_jsonl_and_parquet(checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from resnext_cli.run.engine import Classifier

    image = save_photo(tmp_path / "a.png", "checks", 9)
    want = Classifier(checkpoint=str(checkpoint), precision="fp32").features([image])[0]
    common = ("--checkpoint", checkpoint, *FAST)
    (record,) = ok(run_resnext("classify", image, "--embeddings", "-f", "jsonl", *common)).records()
    assert len(record["embedding"]) == 2048
    torch.testing.assert_close(torch.tensor(record["embedding"]), want, rtol=1e-4, atol=1e-5)
    plain = ok(run_resnext("classify", image, "-f", "jsonl", *common)).records()[0]
    assert "embedding" not in plain
    assert [p["label"] for p in plain["predictions"]] == [p["label"] for p in record["predictions"]]
    table = tmp_path / "out.parquet"
    ok(run_resnext("classify", image, "--embeddings", "-o", table, *common))
    column = pq.read_table(table).column("embedding").to_pylist()
    torch.testing.assert_close(torch.tensor(column[0]), want, rtol=1e-4, atol=1e-5)
    refused = run_resnext("classify", image, "--embeddings", "-f", "csv", *common)
    assert refused.code == 2
    assert refused.stderr.strip() == (
        "error: --embeddings go into json, jsonl or parquet output, not csv (give -f jsonl, "
        "or -o FILE.jsonl or FILE.parquet)"
    )


def test_a_base_checkpoint_damaged_before_its_weights_are_copied_is_one_line(
    tmp_path: Path,
) -> None:
    """The base file read at the start and changed on disk before the copy: a
    CheckpointError naming the output, and no file there."""
    import numpy as np

    from resnext_cli.errors import CheckpointError
    from resnext_cli.files import OutputTarget
    from resnext_cli.model.torch_file import StoredFile
    from resnext_cli.run.learn import Base, publish_checkpoint

    base_path = tmp_path / "base.pth"
    # 400 kB: past what the reader has buffered, so the copy reads the changed bytes.
    weight = torch.arange(100_000, dtype=torch.float32).reshape(1000, 100) + 0.5
    torch.save({"conv1.weight": weight}, base_path)
    stored = StoredFile(base_path)
    data = bytearray(base_path.read_bytes())
    at = data.find(weight.numpy().tobytes()) + 200_000
    data[at : at + 4] = b"\xff\xff\xff\xff"  # same size, other bytes: the zip's CRC fails
    base_path.write_bytes(bytes(data))
    out = tmp_path / "learned.pth"
    target = OutputTarget.claim(out, force=False)
    with Base(tensors=dict(stored.tree), stored=stored) as base:
        payload = {"state_dict": {**base.tensors, "fc.bias": np.zeros(2, np.float32)}}
        with pytest.raises(CheckpointError) as info:
            publish_checkpoint(payload, base, target)
    target.release()
    assert str(info.value) == (
        f"cannot copy the base weights into '{out}': cannot read storage '0': "
        "Bad CRC-32 for file 'base/data/0' (nothing was written)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.pth"]


# == in-process: learn.py's functions one at a time, on small inputs =========================
#
# Features are small numpy vectors put in the feature cache (or handed out by a fake engine),
# the base checkpoint a few tensors: no network runs, so each test takes milliseconds and a
# mutation run can afford them all. What each expects is written out here by hand (messages,
# payloads) or computed with head.py's functions (the weights), never read from learn.py.

DIM = 4  # feature length of the small learns
MODEL = "resnext50_32x4d"


@dataclass
class Said:
    """A console on in-memory streams that keeps each line said on stderr, with its style."""

    console: Console
    lines: list[tuple[str, str]]
    out: io.StringIO
    err: io.StringIO

    def messages(self) -> list[str]:
        return [message for message, _ in self.lines]


def said(*, quiet: bool = False) -> Said:
    out, err = io.StringIO(), io.StringIO()
    console = Console.on(io.BytesIO(), out, err, width=400)
    console.quiet = quiet
    lines: list[tuple[str, str]] = []
    real_say = console.say

    def say(message: str, *, style: str = "") -> None:
        lines.append((message, style))
        real_say(message, style=style)

    console.__dict__["say"] = say  # note and warn go through say
    return Said(console, lines, out, err)


def tiny_png(path: Path, shade: int) -> Path:
    """A 1x1 PNG; *shade* makes its bytes (and so its sha256) differ from the others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (1, 1), (shade % 256, shade // 256, 7)).save(path)
    return path


def sha(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def tiny_base(path: Path, *, fc_rows: int = 3) -> Path:
    """A base checkpoint of three small tensors, fc among them, in torch's zip format."""
    g = torch.Generator().manual_seed(11)
    torch.save(
        {
            "conv1.weight": torch.randn(2, 3, generator=g),
            "fc.weight": torch.randn(fc_rows, DIM, generator=g),
            "fc.bias": torch.randn(fc_rows, generator=g),
        },
        path,
    )
    return path


def fast_config(base: Path | None, **more: Any) -> Config:
    return Config(
        checkpoint=None if base is None else str(base),
        precision="fp32",
        device="cpu",
        runtime="torch",
        **more,
    )


def learn_plan(config: Config) -> Plan:
    """The plan learn makes of *config* (learn ignores topk, labels, categories, embeddings)."""
    return resolve(replace(config, topk=1, labels=None, categories=None, embeddings=False))


def fill_cache(
    config: Config, features: dict[Path, np.ndarray], digests: dict[Path, bytes]
) -> Path:
    """Put each file's feature in the cache a learn with *config* reads; its folder."""
    cache = FeatureCache(learn.cache_setup(learn_plan(config)))
    for path, feature in features.items():
        entry = Entry(digests.get(path, sha(path)), np.asarray(feature, np.float32))
        assert cache.put(Identity.of(path), entry)
    return cache.folder


def cluster(k: int, i: int) -> np.ndarray:
    """Image i of class k: near 3 * e_k, a little apart from its neighbours."""
    v = np.zeros(DIM, np.float32)
    v[k] = 3.0
    v[DIM - 1] += 0.1 * i
    v[(k + 1) % (DIM - 1)] += 0.05 * ((i * 7) % 5)
    return v


def class_tree(root: Path, counts: dict[str, int]) -> dict[str, list[Path]]:
    """Class folders of tiny PNGs: {label: [paths in name order]}."""
    made: dict[str, list[Path]] = {}
    for k, (label, n) in enumerate(counts.items()):
        made[label] = [tiny_png(root / label / f"{i}.png", 100 * k + i) for i in range(n)]
    return made


@dataclass
class Learned:
    code: int
    seen: Said
    out: Path

    def saved(self) -> dict[str, Any]:
        loaded: dict[str, Any] = torch.load(self.out, weights_only=True)
        return loaded


def learn_here(request: learn.LearnRequest, config: Config, *, quiet: bool = False) -> Learned:
    seen = said(quiet=quiet)
    code = learn.run_learn(request, config, seen.console)
    return Learned(int(code), seen, Path(request.output))


def expected_head(x: np.ndarray, y: np.ndarray, classes: int, holdout: float, seed: int) -> Head:
    """The head learn should save: fitted on the training share, then refitted on all."""
    train, held = stratified_split(y, classes, holdout, seed=seed)
    start = fit_head(x[train], y[train], classes) if held.size else None
    return fit_head(x, y, classes, start=start)


def use_line(out: Path, flag: str = "") -> tuple[str, str]:
    return (f"use it with: resnext classify --checkpoint {out}{flag} PHOTOS", "")


def features_line(computed: int, hits: int, model: str = MODEL) -> tuple[str, str]:
    return (f"features: {computed} computed, {hits} from the cache ({model}, cpu, fp32)", "")


# -- LearnRequest ---------------------------------------------------------------------------


def test_learn_request_defaults() -> None:
    assert learn.LearnRequest("m.pth") == learn.LearnRequest(
        output="m.pth",
        folder=None,
        records=None,
        force=False,
        holdout=0.2,
        seed=0,
        allow_duplicates=False,
    )


# -- cache_setup --------------------------------------------------------------------------


def setup_parts(plan: Plan, base: object, interpolation: str) -> dict[str, object]:
    """What the cache key of *plan* must hash, written out from the specification."""
    return {
        "format": 1,
        "model": plan.info.model,
        "base": base,
        "resize": [232],
        "crop": [224],
        "interpolation": interpolation,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "upright": plan.decode.upright,
        "plain_rgb": plan.decode.plain_rgb,
        "draft": plan.decode.draft_min_side,
        "truncated": plan.decode.allow_truncated,
        "decode_on": plan.decode_on,
        "precision": "fp32",
        "fold": plan.fold_batchnorm,
        "device": "cpu",
    }


def key_of(parts: dict[str, object]) -> str:
    """setup_key, by hand: sha256 of the sorted JSON, its first 32 hex digits."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def captured_setup(plan: Plan, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, object]]:
    got: list[dict[str, object]] = []
    real = learn.setup_key

    def keep(parts: dict[str, object]) -> str:
        got.append(parts)
        return real(parts)

    monkeypatch.setattr(learn, "setup_key", keep)
    key = learn.cache_setup(plan)
    (parts,) = got
    return key, parts


def test_cache_setup_of_a_local_checkpoint_keys_its_absolute_path_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tiny_base(tmp_path / "base.pth")
    os.utime(base, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    monkeypatch.chdir(tmp_path)
    plan = learn_plan(fast_config(Path("base.pth")))  # relative: keyed by its absolute path
    key, parts = captured_setup(plan, monkeypatch)
    held = [str(tmp_path / "base.pth"), base.stat().st_size, 1_600_000_000_987_654_321]
    want = setup_parts(plan, held, "InterpolationMode.BILINEAR")
    assert parts == want
    assert key == key_of(want)
    assert (plan.decode.upright, plan.decode.plain_rgb) == (True, False)  # as written above


def test_cache_setup_without_a_checkpoint_keys_the_weights_tag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = learn_plan(fast_config(None))
    key, parts = captured_setup(plan, monkeypatch)
    want = setup_parts(plan, "IMAGENET1K_V2", "InterpolationMode.BILINEAR")
    assert parts == want and key == key_of(want)


def test_cache_setup_of_a_url_keys_the_url_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://example.invalid/models/base.pth"
    plan = replace(learn_plan(fast_config(None)), checkpoint=url)  # never fetched here
    key, parts = captured_setup(plan, monkeypatch)
    want = setup_parts(plan, url, "InterpolationMode.BILINEAR")
    assert parts == want and key == key_of(want)


def test_cache_setup_says_interpolation_as_torchvision_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torchvision.transforms import InterpolationMode

    plan = learn_plan(fast_config(None))
    plan = replace(plan, preprocess=replace(plan.preprocess, interpolation="nearest-exact"))
    key, parts = captured_setup(plan, monkeypatch)
    assert str(InterpolationMode("nearest-exact")) == "InterpolationMode.NEAREST_EXACT"
    want = setup_parts(plan, "IMAGENET1K_V2", "InterpolationMode.NEAREST_EXACT")
    assert parts == want and key == key_of(want)


def test_cache_setup_changes_with_the_checkpoints_identity(tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "base.pth")
    plan = learn_plan(fast_config(base))
    before = learn.cache_setup(plan)
    assert learn.cache_setup(plan) == before
    os.utime(base, ns=(1, 2))
    assert learn.cache_setup(plan) != before


# -- look_up and _digest --------------------------------------------------------------------


def test_look_up_takes_cached_entries_reads_the_rest_and_drops_the_unreadable(
    tmp_path: Path,
) -> None:
    cached = tiny_png(tmp_path / "cached.png", 1)
    fresh = tmp_path / "fresh.png"
    fresh.write_bytes(b"x" * (3 << 20) + b"tail")  # more than one 1 MiB read
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    missing = tmp_path / "missing.png"
    cache = FeatureCache("setup", root=tmp_path / "cache")
    feature = np.arange(DIM, dtype=np.float32)
    cache.put(Identity.of(cached), Entry(b"\x01" * 32, feature))  # not the file's own sha256
    examples = [
        Example("pipe-in", fifo, "a"),
        Example("missing-in", missing, "a"),
        Example("cached-in", cached, "a"),
        Example("fresh-in", fresh, "b"),
    ]
    tally = Tally()
    seen = said()
    learn.look_up(examples, cache, tally, seen.console)
    assert [e.input for e in examples] == ["cached-in", "fresh-in"]
    got_cached, got_fresh = examples
    st = fresh.stat()
    assert got_cached.identity == Identity(
        str(cached), cached.stat().st_size, cached.stat().st_mtime_ns
    )
    assert got_fresh.identity == Identity(str(fresh), st.st_size, st.st_mtime_ns)
    assert got_cached.digest == b"\x01" * 32
    assert got_cached.feature is not None and got_cached.feature.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert got_fresh.digest == hashlib.sha256(b"x" * (3 << 20) + b"tail").digest()
    assert got_fresh.feature is None
    assert tally.skipped == {"unreadable": 2}
    assert seen.lines == [
        ("error: 'pipe-in' is not a regular file (a pipe, socket or device)", "red"),
        (
            f"error: cannot read 'missing-in': [Errno 2] No such file or directory: '{missing}'",
            "red",
        ),
    ]
    assert cache.stats.hits == 1


def test_look_up_of_an_empty_file_digests_no_bytes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    examples = [Example("e", empty, "a")]
    learn.look_up(examples, FeatureCache("s", root=tmp_path / "c"), Tally(), said().console)
    assert examples[0].digest == bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_digest_names_the_input_when_the_file_is_gone(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        learn._digest(Example("given-name", tmp_path / "gone.png", "a"))
    assert (info.value.error_type, info.value.message) == (
        "not_found",
        "no such file: 'given-name'",
    )


# -- check_duplicates -----------------------------------------------------------------------


def digested(input: str, label: str, digest: bytes) -> Example:
    return Example(input, Path(input), label, digest=digest)


def test_same_bytes_in_one_class_is_no_duplicate() -> None:
    seen = said()
    examples = [
        digested("a1", "a", b"1"),
        digested("a2", "a", b"1"),
        digested("b1", "b", b"2"),
        digested("b2", "b", b"3"),
    ]
    learn.check_duplicates(examples, allow=False, console=seen.console)
    assert seen.lines == []


def test_same_bytes_in_two_classes_is_refused_even_after_a_same_class_pair() -> None:
    examples = [
        digested("a1", "a", b"1"),
        digested("a2", "a", b"1"),
        digested("b1", "b\x1b", b"1"),
    ]
    with pytest.raises(ConfigError) as info:
        learn.check_duplicates(examples, allow=False, console=said().console)
    assert str(info.value) == (
        "'a1' (class 'a') and 'b1' (class 'b\\x1b') are the same image (remove one, or give "
        "--allow-duplicates to keep both)"
    )


def test_allowed_duplicates_are_each_said() -> None:
    seen = said()
    examples = [
        digested("a1", "a", b"1"),
        digested("b1", "b", b"1"),
        digested("c1", "c" * 70, b"1"),
        digested("b2", "b", b"2"),
    ]
    learn.check_duplicates(examples, allow=True, console=seen.console)
    assert seen.lines == [
        (
            "warning: 'a1' (class 'a') and 'b1' (class 'b') are the same image; kept in both "
            "classes (--allow-duplicates)",
            "yellow",
        ),
        (
            f"warning: 'a1' (class 'a') and 'c1' (class '{'c' * 59}…') are the same image; "
            "kept in both classes (--allow-duplicates)",
            "yellow",
        ),
    ]


def test_check_duplicates_needs_every_digest() -> None:
    with pytest.raises(AssertionError):
        learn.check_duplicates([Example("a", Path("a"), "a")], allow=True, console=said().console)


# -- compute_features -----------------------------------------------------------------------


class FakeEngine:
    """features_sources as LocalEngine's: one (source, feature or InputError) per source."""

    def __init__(self, outcomes: list[Any], *, then: BaseException | None = None) -> None:
        self.outcomes = outcomes
        self.then = then
        self.asked: list[list[Source]] = []

    def features_sources(self, sources: Any) -> Any:
        sources = list(sources)
        self.asked.append(sources)
        yield from zip(sources, self.outcomes, strict=False)
        if self.then is not None:
            raise self.then


def counted(seen: Said) -> list[object]:
    """Record what the console's progress counter is told."""
    log: list[object] = []

    @contextlib.contextmanager
    def counting(what: str = "classifying") -> Any:
        log.append(("counting", what))
        yield (lambda: log.append("tick")), (lambda total: log.append(("total", total)))

    seen.console.__dict__["counting"] = counting
    return log


def identified(tmp_path: Path, name: str, label: str, *, feature: bool = False) -> Example:
    path = tiny_png(tmp_path / name, len(name))
    example = Example(f"in/{name}", path, label, identity=Identity.of(path), digest=sha(path))
    if feature:
        example.feature = np.full(DIM, 9.0, np.float32)
    return example


def test_compute_features_computes_only_the_missing_and_caches_them(tmp_path: Path) -> None:
    have = identified(tmp_path, "have.png", "a", feature=True)
    bad = identified(tmp_path, "bad.png", "a")
    one = identified(tmp_path, "one.png", "b")
    two = identified(tmp_path, "two.png", "b")
    examples = [have, bad, one, two]
    f1, f2 = np.full(DIM, 1.5, np.float32), np.arange(DIM, dtype=np.float32)
    engine = FakeEngine([InputError("not_an_image", "cannot decode 'in/bad.png'"), f1, f2])
    cache = FeatureCache("s", root=tmp_path / "cache")
    tally = Tally()
    seen = said()
    log = counted(seen)
    learn.compute_features(engine, examples, cache, tally, seen.console)  # type: ignore[arg-type]
    assert engine.asked == [[Source(input=e.input, path=e.path) for e in (bad, one, two)]]
    assert examples == [have, one, two]
    assert one.feature is f1 and two.feature is f2
    assert have.feature is not None and have.feature.tolist() == [9.0] * DIM
    assert seen.lines == [
        ("computing features of 3 images…", ""),
        ("error: cannot decode 'in/bad.png'", "red"),
    ]
    assert log == [("counting", "features"), ("total", 3), "tick", "tick", "tick"]
    assert tally.skipped == {"not_an_image": 1}
    assert cache.stats.computed == 2
    reader = FeatureCache("s", root=tmp_path / "cache")
    for example, feature in ((one, f1), (two, f2)):
        assert example.identity is not None
        entry = reader.get(example.identity)
        assert entry is not None and entry.digest == example.digest
        assert entry.feature.tolist() == feature.tolist()
    assert bad.identity is not None and reader.get(bad.identity) is None


def test_compute_features_with_every_feature_known_asks_nothing(tmp_path: Path) -> None:
    examples = [identified(tmp_path, "a.png", "a", feature=True)]
    engine = FakeEngine([])
    seen = said()
    log = counted(seen)
    learn.compute_features(
        engine,  # type: ignore[arg-type]
        examples,
        FeatureCache("s", root=tmp_path / "c"),
        Tally(),
        seen.console,
    )
    assert engine.asked == [] and seen.lines == [] and log == []
    assert len(examples) == 1


def test_compute_features_wants_one_outcome_per_image(tmp_path: Path) -> None:
    examples = [identified(tmp_path, "a.png", "a"), identified(tmp_path, "b.png", "b")]
    engine = FakeEngine([np.zeros(DIM, np.float32)])  # one outcome short
    with pytest.raises(ValueError, match="zip"):
        learn.compute_features(
            engine,  # type: ignore[arg-type]
            examples,
            FeatureCache("s", root=tmp_path / "c"),
            Tally(),
            said().console,
        )


def test_compute_features_needs_identity_and_digest(tmp_path: Path) -> None:
    path = tiny_png(tmp_path / "a.png", 1)
    for example in (
        Example("a", path, "a", digest=b"1"),
        Example("a", path, "a", identity=Identity.of(path)),
    ):
        with pytest.raises(AssertionError):
            learn.compute_features(
                FakeEngine([np.zeros(DIM, np.float32)]),  # type: ignore[arg-type]
                [example],
                FeatureCache("s", root=tmp_path / "c"),
                Tally(),
                said().console,
            )


# -- report_score and _warn_small -------------------------------------------------------------

SCORED = np.array([[2, 0, 2, 0], [1, 0, 0, 0], [0, 0, 3, 1], [0, 0, 0, 0]])
SCORED_LABELS = ["cat", "d" * 70, "eel\x1b", "fox"]
LONG_D = "d" * 59 + "…"


def table_row(name: str, held: str, precision: str, recall: str) -> str:
    """One line of the score table: the class column as wide as its longest name (60),
    the numbers right-aligned under their headers, two spaces between columns."""
    return f"{name:<60}  {held:>8}  {precision:>9}  {recall:>6}\n"


def test_report_score_table_and_most_confused_pairs() -> None:
    seen = said()
    learn.report_score(Score(SCORED), SCORED_LABELS, seen.console)
    # 9 held out, 5 right; precision: column share, recall: row share, '-' where none.
    assert seen.err.getvalue() == (
        "held-out accuracy: 55.6% of 9 images\n"
        + table_row("class", "held out", "precision", "recall")
        + table_row("cat", "4", "66.7%", "50.0%")
        + table_row(LONG_D, "1", "-", "0.0%")
        + table_row("eel\\x1b", "4", "60.0%", "75.0%")
        + table_row("fox", "0", "0.0%", "-")
        + "confused: 'cat' taken for 'eel\\x1b' 2 times\n"
        f"confused: '{LONG_D}' taken for 'cat' 1 time\n"
        "confused: 'eel\\x1b' taken for 'fox' 1 time\n"
    )


def test_report_score_when_quiet_says_nothing() -> None:
    seen = said(quiet=True)
    learn.report_score(Score(SCORED), SCORED_LABELS, seen.console)
    assert seen.err.getvalue() == ""


@pytest.mark.parametrize(("value", "text"), [(None, "-"), (0.0, "0.0%"), (0.12345, "12.3%")])
def test_percent(value: float | None, text: str) -> None:
    assert learn._percent(value) == text


def test_warn_small_under_five_images() -> None:
    seen = said()
    learn._warn_small(["one", "four", "five", "x" * 80], [1, 4, 5, 2], seen.console)
    more = "add a few more (5 or more; 20 or more is better)"
    assert seen.lines == [
        (f"warning: class 'one' has only 1 image: {more}", "yellow"),
        (f"warning: class 'four' has only 4 images: {more}", "yellow"),
        (f"warning: class '{'x' * 59}…' has only 2 images: {more}", "yellow"),
    ]


def test_warn_small_wants_a_count_per_class() -> None:
    with pytest.raises(ValueError, match="zip"):
        learn._warn_small(["a", "b"], [9], said().console)


# -- Base, read_base, learned_state -----------------------------------------------------------


@pytest.mark.parametrize(
    ("tensors", "classes"),
    [
        ({"fc.weight": np.zeros((7, 3)), "fc.bias": np.zeros(7)}, 7),
        ({"fc.bias": np.zeros(7)}, 1000),
        ({"fc.weight": np.zeros(7)}, 1000),
        ({"fc.weight": np.zeros((7, 3, 1))}, 1000),
    ],
    ids=["fc", "no-fc-weight", "one-dimension", "three-dimensions"],
)
def test_base_classes_are_the_rows_of_fc(tensors: dict[str, Any], classes: int) -> None:
    assert learn.Base(tensors).classes(1000) == classes


def test_base_closes_its_stored_file(tmp_path: Path) -> None:
    with StoredFile(tiny_base(tmp_path / "b.pth")) as stored:
        base = learn.Base(dict(stored.tree), stored=stored)  # type: ignore[call-overload]
        with base as entered:
            assert entered is base
            assert stored.storage_bytes("0")  # open while the base is
        with pytest.raises(learn.torch_file.Unsupported, match="already closed"):
            stored.storage_bytes("0")
    with learn.Base({}) as plain:  # nothing stored: nothing to close
        assert plain.stored is None


@dataclass
class BaseCalls:
    weights: list[Any]
    states: list[Any]
    closed: list[Path]


@pytest.fixture
def base_calls(monkeypatch: pytest.MonkeyPatch) -> Any:
    """read_base's collaborators recorded: the weights file it is given, load_state's
    calls (it answers a small state of its own), the stored files closed."""
    calls = BaseCalls([], [], [])
    state = ({"w": torch.ones(1)}, "loaded-name")

    def setup(path: Path) -> BaseCalls:
        def weights_file(plan: Any, *, progress: Any = None) -> tuple[Path, str]:
            calls.weights.append(progress)
            return path, "name"

        def load_state(plan: Any, *, progress: Any = None) -> Any:
            calls.states.append((plan, progress))
            return state

        class Recording(StoredFile):
            def close(self) -> None:
                calls.closed.append(path)
                super().close()

        monkeypatch.setattr(learn, "weights_file", weights_file)
        monkeypatch.setattr(learn, "load_state", load_state)
        monkeypatch.setattr(learn.torch_file, "StoredFile", Recording)
        return calls

    return setup


def progress(done: int, total: int | None) -> None:
    """A download progress callback (never called: nothing is downloaded)."""


@pytest.mark.parametrize("wrap", [None, "state_dict"])
def test_read_base_reads_plain_tensors_without_torch(
    tmp_path: Path, base_calls: Any, wrap: str | None
) -> None:
    state = torch.load(tiny_base(tmp_path / "raw.pth"), weights_only=True)
    path = tmp_path / "base.pth"
    torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    calls = base_calls(path)
    base = learn.read_base(learn_plan(fast_config(path)), progress=progress)
    assert calls.weights == [progress] and calls.states == []
    assert base.state is None and isinstance(base.stored, StoredFile)
    assert list(base.tensors) == ["conv1.weight", "fc.weight", "fc.bias"]
    assert all(isinstance(t, StoredTensor) for t in base.tensors.values())
    assert [base.tensors[k].shape for k in base.tensors] == [(2, 3), (3, DIM), (3,)]
    assert calls.closed == []
    base.__exit__()
    assert calls.closed == [path]


def tiny_state() -> dict[str, torch.Tensor]:
    return {"conv1.weight": torch.ones(2, 2), "fc.weight": torch.ones(3, DIM)}


@pytest.mark.parametrize(
    "content",
    ["int8-marker", "packed", "no-tensors", "a-list", "legacy", "folder"],
)
def test_read_base_leaves_to_torch_what_it_does_not_read(
    tmp_path: Path, base_calls: Any, content: str
) -> None:
    path = tmp_path / "base.pth"
    opened = True
    if content == "int8-marker":
        torch.save({"resnext_quantized": True, "state_dict": tiny_state()}, path)
    elif content == "packed":
        torch.save({**tiny_state(), "fc._packed_params": torch.ones(1)}, path)
    elif content == "no-tensors":
        torch.save({"epoch": 3}, path)
    elif content == "a-list":
        torch.save([torch.ones(2)], path)
    elif content == "legacy":
        torch.save(tiny_state(), path, _use_new_zipfile_serialization=False)
        opened = False
    else:
        path.mkdir()
        opened = False
    calls = base_calls(path)
    plan = learn_plan(fast_config(None))
    base = learn.read_base(plan, progress=progress)
    assert calls.weights == [progress]
    assert calls.states == [(plan, progress)]
    assert base.stored is None
    assert base.state == ({"w": torch.ones(1)}, "loaded-name")
    assert list(base.tensors) == ["w"] and base.tensors is not base.state[0]
    assert calls.closed == ([path] if opened else [])


def test_learned_state_keeps_the_stored_base_and_the_heads_arrays(tmp_path: Path) -> None:
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    bias = np.array([0.5, -0.5], np.float32)
    head = Head(weight, bias)
    with StoredFile(tiny_base(tmp_path / "b.pth")) as stored:
        base = learn.Base(dict(stored.tree), stored=stored)  # type: ignore[call-overload]
        state = learn.learned_state(base, head)
        assert list(state) == ["conv1.weight", "fc.weight", "fc.bias"]
        assert state["conv1.weight"] is base.tensors["conv1.weight"]
        assert state["fc.weight"] is weight and state["fc.bias"] is bias


@pytest.mark.parametrize("first", ["fc.weight", "fc.bias"])
def test_learned_state_of_a_torch_base_is_float32_tensors(first: str) -> None:
    """The base's own fc is dropped wherever it stood: the new one comes last, weight then
    bias, as torchvision orders a ResNeXt's state dict."""
    conv = torch.ones(2)
    old_fc = {"fc.weight": torch.zeros(9, 2), "fc.bias": torch.zeros(9)}
    base = learn.Base({first: old_fc[first], "conv1.weight": conv, **old_fc}, state=({}, "x"))
    head = Head(np.array([[1.25, 2.0]], np.float64), np.array([-3.5], np.float64))
    state = learn.learned_state(base, head)
    assert list(state) == ["conv1.weight", "fc.weight", "fc.bias"]
    assert state["conv1.weight"] is conv
    assert state["fc.weight"].dtype == torch.float32 and state["fc.bias"].dtype == torch.float32
    assert state["fc.weight"].tolist() == [[1.25, 2.0]] and state["fc.bias"].tolist() == [-3.5]


# -- publish_checkpoint ---------------------------------------------------------------------


def test_publish_copies_a_stored_base_into_the_output(tmp_path: Path) -> None:
    path = tiny_base(tmp_path / "b.pth")
    want = torch.load(path, weights_only=True)
    out = tmp_path / "out.pth"
    target = OutputTarget.claim(out, force=False)
    with StoredFile(path) as stored:
        base = learn.Base(dict(stored.tree), stored=stored)  # type: ignore[call-overload]
        payload = {
            "state_dict": {
                "conv1.weight": base.tensors["conv1.weight"],
                "fc.bias": np.array([1.0], np.float32),
            },
            "n": 2,
        }
        learn.publish_checkpoint(payload, base, target)
    target.release()
    saved = torch.load(out, weights_only=True)
    assert saved["n"] == 2 and list(saved["state_dict"]) == ["conv1.weight", "fc.bias"]
    assert torch.equal(saved["state_dict"]["conv1.weight"], want["conv1.weight"])
    assert saved["state_dict"]["fc.bias"].tolist() == [1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pth", "out.pth"]


def test_publish_saves_a_torch_base_with_torch(tmp_path: Path) -> None:
    out = tmp_path / "out.pth"
    target = OutputTarget.claim(out, force=False)
    payload = {"state_dict": {"w": torch.arange(3.0)}, "names": ["a", "b"]}
    learn.publish_checkpoint(payload, learn.Base({}, state=({}, "x")), target)
    target.release()
    saved = torch.load(out, weights_only=True)
    assert saved["names"] == ["a", "b"] and saved["state_dict"]["w"].tolist() == [0.0, 1.0, 2.0]


def failing_write(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> list[Any]:
    files: list[Any] = []

    def write_checkpoint(fp: Any, tree: object, *, source: Any) -> None:
        files.append(fp)
        fp.write(b"partial")
        raise error

    monkeypatch.setattr(learn.torch_write, "write_checkpoint", write_checkpoint)
    return files


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            learn.torch_file.Unsupported("storage '0' changed"),
            "cannot copy the base weights into '{out}': storage '0' changed (nothing was written)",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "cannot write '{out}': No space left on device (choose a writable folder)",
        ),
        (OSError("plain words"), "cannot write '{out}': plain words (choose a writable folder)"),
    ],
    ids=["base-changed", "disk-full", "no-strerror"],
)
def test_publish_failures_are_one_line_and_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException, message: str
) -> None:
    files = failing_write(monkeypatch, error)
    out = tmp_path / "out.pth"
    target = OutputTarget.claim(out, force=False)
    base = learn.Base({}, stored=cast(Any, object()))
    kind = CheckpointError if isinstance(error, learn.torch_file.Unsupported) else OutputError
    with pytest.raises(kind) as info:
        learn.publish_checkpoint({"x": 1}, base, target)
    target.release()
    assert str(info.value) == message.format(out=out)
    assert files[0].closed
    assert list(tmp_path.iterdir()) == []


def test_publish_lets_other_errors_through_and_closes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = failing_write(monkeypatch, KeyboardInterrupt())
    target = OutputTarget.claim(tmp_path / "out.pth", force=False)
    with pytest.raises(KeyboardInterrupt):
        learn.publish_checkpoint({}, learn.Base({}, stored=cast(Any, object())), target)
    assert files[0].closed
    target.release()
    assert list(tmp_path.iterdir()) == []


# -- _engine ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("tensors", "classes"), [({"fc.weight": np.zeros((3, 2))}, 3), ({}, 1000)])
def test_engine_on_the_base_with_as_many_labels_as_its_fc_has_rows(
    monkeypatch: pytest.MonkeyPatch, tensors: dict[str, Any], classes: int
) -> None:
    made: list[Any] = []
    monkeypatch.setattr(
        learn, "load_model", lambda plan, *, state=None: made.append((plan, state)) or "model"
    )
    monkeypatch.setattr(learn, "LocalEngine", lambda model: ("engine", model))
    plan = learn_plan(fast_config(None))
    state = ({"w": torch.ones(1)}, "name")
    engine = learn._engine(plan, learn.Base(tensors, state=state))
    assert engine == ("engine", "model")  # type: ignore[comparison-overlap]
    ((given, given_state),) = made
    assert given_state is state
    assert given.labels == tuple(str(i) for i in range(classes))
    assert replace(given, labels=plan.labels) == plan


# -- run_learn: whole learns from cached features (no network) --------------------------------


def test_learn_from_cached_features(tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "base.pth")
    # learn ignores these: a labels file, categories, top-k and embeddings are classify's.
    config = fast_config(
        base,
        labels=str(tmp_path / "no-labels.txt"),
        categories=str(tmp_path / "no-categories.txt"),
        topk=3,
        embeddings=True,
    )
    tree = class_tree(tmp_path / "photos", {"a": 5, "b": 5, "c": 5})
    features = {
        p: cluster(k, i) for k, paths in enumerate(tree.values()) for i, p in enumerate(paths)
    }
    fill_cache(config, features, {})
    out = tmp_path / "m.pth"
    request = learn.LearnRequest(str(out), folder=str(tmp_path / "photos"), seed=3)
    done = learn_here(request, config)
    assert done.code == 0
    assert done.seen.out.getvalue() == f"{out}\n"
    assert done.seen.lines == [
        features_line(0, 15),
        ("learning 3 classes from 15 images", ""),
        ("held-out accuracy: 100.0% of 3 images", ""),
        (f"saved '{out}': 3 classes, fitted on all 15 images", ""),
        use_line(out),
    ]
    table = [line.split() for line in done.seen.err.getvalue().splitlines()]
    assert ["a", "1", "100.0%", "100.0%"] in table  # the table is drawn
    saved = done.saved()
    assert list(saved) == ["state_dict", "resnext_classes", "resnext_learn"]
    assert saved["resnext_classes"] == ["a", "b", "c"]
    assert saved["resnext_learn"] == {
        "model": MODEL,
        "base": str(base),
        "images": 15,
        "holdout": 0.2,
        "holdout_accuracy": 1.0,
        "seed": 3,
        "precision": "fp32",
    }
    state = saved["state_dict"]
    assert list(state) == ["conv1.weight", "fc.weight", "fc.bias"]
    assert torch.equal(state["conv1.weight"], torch.load(base, weights_only=True)["conv1.weight"])
    x = np.stack(list(features.values()))
    y = np.repeat(np.arange(3), 5)
    head = expected_head(x, y, 3, 0.2, 3)
    assert state["fc.weight"].numpy().tolist() == head.weight.tolist()
    assert state["fc.bias"].numpy().tolist() == head.bias.tolist()
    # Another seed holds out others: another head.
    other = expected_head(x, y, 3, 0.2, 4)
    assert other.weight.tolist() != head.weight.tolist()


def test_learn_from_a_list_without_holding_out(tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "base.pth")
    config = fast_config(base, model="resnext101_32x8d")
    tree = class_tree(tmp_path / "photos", {"y": 5, "x": 2})
    rows = [(p, "x") for p in tree["x"]] + [(p, "y") for p in tree["y"]]
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    features = {p: cluster(int(label == "y"), i) for i, (p, label) in enumerate(rows)}
    same = b"\x05" * 32  # x's first and y's first: the same bytes, allowed
    fill_cache(config, features, {tree["x"][0]: same, tree["y"][0]: same})
    out = tmp_path / "m.pth"
    request = learn.LearnRequest(
        str(out), records=str(listing), holdout=0.0, seed=5, allow_duplicates=True
    )
    done = learn_here(request, config)
    assert done.code == 0 and done.seen.out.getvalue() == f"{out}\n"
    assert done.seen.lines == [
        (
            f"warning: '{tree['x'][0]}' (class 'x') and '{tree['y'][0]}' (class 'y') are the "
            "same image; kept in both classes (--allow-duplicates)",
            "yellow",
        ),
        features_line(0, 7, "resnext101_32x8d"),
        ("learning 2 classes from 7 images", ""),
        (
            "warning: class 'x' has only 2 images: add a few more (5 or more; 20 or more is "
            "better)",
            "yellow",
        ),
        (f"saved '{out}': 2 classes, fitted on all 7 images", ""),
        use_line(out, " -m resnext101_32x8d"),
    ]
    saved = done.saved()
    assert saved["resnext_classes"] == ["x", "y"]
    assert saved["resnext_learn"] == {
        "model": "resnext101_32x8d",
        "base": str(base),
        "images": 7,
        "holdout": 0.0,
        "holdout_accuracy": None,
        "seed": 5,
        "precision": "fp32",
    }
    x = np.stack(list(features.values()))
    head = fit_head(x, np.array([0, 0, 1, 1, 1, 1, 1]), 2)
    assert saved["state_dict"]["fc.weight"].numpy().tolist() == head.weight.tolist()


def test_learn_too_few_images_to_hold_any_out(tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "base.pth")
    config = fast_config(base)
    tree = class_tree(tmp_path / "photos", {"a": 1, "b": 1})
    fill_cache(config, {tree["a"][0]: cluster(0, 0), tree["b"][0]: cluster(1, 0)}, {})
    out = tmp_path / "m.pth"
    done = learn_here(learn.LearnRequest(str(out), folder=str(tmp_path / "photos")), config)
    more = "add a few more (5 or more; 20 or more is better)"
    assert done.code == 0
    assert done.seen.lines == [
        features_line(0, 2),
        ("learning 2 classes from 2 images", ""),
        (f"warning: class 'a' has only 1 image: {more}", "yellow"),
        (f"warning: class 'b' has only 1 image: {more}", "yellow"),
        ("warning: too few images to hold any out: the model is not scored", "yellow"),
        (f"saved '{out}': 2 classes, fitted on all 2 images", ""),
        use_line(out),
    ]
    assert done.saved()["resnext_learn"]["holdout_accuracy"] is None


@pytest.mark.parametrize("poor", [0.7, 0.5], ids=["under", "at-the-line"])
def test_learn_says_when_held_out_accuracy_is_poor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, poor: float
) -> None:
    """Every image has the same feature: the head cannot tell the classes apart and calls
    every held-out image 'a' (the lowest index on a tie), half of them right."""
    monkeypatch.setattr(learn, "POOR_ACCURACY", poor)
    base = tiny_base(tmp_path / "base.pth")
    config = fast_config(base)
    tree = class_tree(tmp_path / "photos", {"a": 5, "b": 5})
    fill_cache(config, {p: np.ones(DIM, np.float32) for ps in tree.values() for p in ps}, {})
    out = tmp_path / "m.pth"
    done = learn_here(learn.LearnRequest(str(out), folder=str(tmp_path / "photos")), config)
    warned = [
        (
            "warning: held-out accuracy is only 50%: add more images per class, move misfiled "
            "ones, or merge classes that look alike",
            "yellow",
        )
    ]
    assert done.code == 0
    assert done.seen.lines == [
        features_line(0, 10),
        ("learning 2 classes from 10 images", ""),
        ("held-out accuracy: 50.0% of 2 images", ""),
        ("confused: 'b' taken for 'a' 1 time", ""),
        *(warned if poor > 0.5 else []),
        (f"saved '{out}': 2 classes, fitted on all 10 images", ""),
        use_line(out),
    ]
    assert done.saved()["resnext_learn"]["holdout_accuracy"] == 0.5


def test_learn_quiet_says_nothing_but_the_output(tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "base.pth")
    config = fast_config(base)
    tree = class_tree(tmp_path / "photos", {"a": 5, "b": 2})
    fill_cache(
        config,
        {p: cluster(k, i) for k, ps in enumerate(tree.values()) for i, p in enumerate(ps)},
        {},
    )
    out = tmp_path / "m.pth"
    done = learn_here(
        learn.LearnRequest(str(out), folder=str(tmp_path / "photos")), config, quiet=True
    )
    assert done.code == 0 and done.seen.out.getvalue() == f"{out}\n"
    assert done.seen.err.getvalue() == ""
    assert done.saved()["resnext_classes"] == ["a", "b"]


@dataclass
class Computing:
    """A learn whose uncached features a fake engine hands out."""

    tree: dict[str, list[Path]]
    config: Config
    engines: list[Any]
    out: Path


def computing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    counts: dict[str, int],
    cached: int,
    outcomes: list[Any],
    then: BaseException | None = None,
) -> Computing:
    """Class folders of *counts* images, the first *cached* of each class in the cache; the
    engine answers *outcomes* (then raises *then*) for the rest, in order."""
    base = tiny_base(tmp_path / "base.pth")
    config = fast_config(base)
    tree = class_tree(tmp_path / "photos", counts)
    fill_cache(
        config,
        {
            p: cluster(k, i)
            for k, ps in enumerate(tree.values())
            for i, p in enumerate(ps)
            if i < cached
        },
        {},
    )
    engines: list[Any] = []

    def engine(plan: Plan, given: learn.Base) -> FakeEngine:
        made = FakeEngine(outcomes, then=then)
        engines.append((plan, given, made))
        return made

    monkeypatch.setattr(learn, "_engine", engine)
    return Computing(tree, config, engines, tmp_path / "m.pth")


def test_learn_computes_what_the_cache_lacks_and_counts_the_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failure = InputError("not_an_image", "cannot decode 'b/2.png'")
    run = computing(tmp_path, monkeypatch, {"a": 3, "b": 3}, 2, [cluster(0, 2), failure])
    request = learn.LearnRequest(str(run.out), folder=str(tmp_path / "photos"), holdout=0.0)
    done = learn_here(request, replace(run.config, topk=3, embeddings=True))
    assert done.code == 1  # some images could not be used
    assert done.seen.out.getvalue() == f"{run.out}\n"
    more = "add a few more (5 or more; 20 or more is better)"
    assert done.seen.lines == [
        ("computing features of 2 images…", ""),
        ("error: cannot decode 'b/2.png'", "red"),
        features_line(1, 4),
        ("learning 2 classes from 5 images", ""),
        (f"warning: class 'a' has only 3 images: {more}", "yellow"),
        (f"warning: class 'b' has only 2 images: {more}", "yellow"),
        ("warning: skipped 1 images that could not be used (1 not_an_image)", "yellow"),
        (f"saved '{run.out}': 2 classes, fitted on all 5 images", ""),
        use_line(run.out),
    ]
    ((plan, base, engine),) = run.engines
    assert plan.checkpoint == str(tmp_path / "base.pth") and isinstance(base.stored, StoredFile)
    # The engine's plan asks for features alone, whatever the config said: top-1 (a top-k
    # past a few-class base's rows is refused when its network loads), no embeddings.
    assert (plan.topk, plan.embeddings, plan.labels_file, plan.categories) == (1, False, None, None)
    assert [s.path for s in engine.asked[0]] == [run.tree["a"][2], run.tree["b"][2]]
    assert done.saved()["resnext_learn"]["images"] == 5


def test_learn_with_every_feature_cached_starts_no_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = computing(tmp_path, monkeypatch, {"a": 2, "b": 2}, 2, [])
    request = learn.LearnRequest(str(run.out), folder=str(tmp_path / "photos"), holdout=0.0)
    assert learn_here(request, run.config).code == 0
    assert run.engines == []


def test_learn_refuses_a_class_left_without_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failure = InputError("not_an_image", "cannot decode 'b/0.png'")
    outcomes = [cluster(0, 0), cluster(0, 1), failure]
    run = computing(tmp_path, monkeypatch, {"a": 2, "b": 1}, 0, outcomes)
    request = learn.LearnRequest(str(run.out), folder=str(tmp_path / "photos"))
    with pytest.raises(ConfigError) as info:
        learn_here(request, run.config)
    assert str(info.value) == ("class 'b' has no readable image (add images to it, or remove it)")
    assert not run.out.exists()


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), Terminated()], ids=["interrupt", "term"])
def test_interrupted_learn_says_what_is_cached_and_saves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: BaseException
) -> None:
    run = computing(tmp_path, monkeypatch, {"a": 3, "b": 3}, 1, [cluster(0, 1)], then=stop)
    seen = said()
    request = learn.LearnRequest(str(run.out), folder=str(tmp_path / "photos"))
    with pytest.raises(type(stop)):
        learn.run_learn(request, run.config, seen.console)
    assert seen.lines == [
        ("computing features of 4 images…", ""),
        (
            "interrupted: nothing was saved (1 new features are cached; run again to go on)",
            "yellow",
        ),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.pth", "photos"]


def test_learn_says_when_features_cannot_be_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    features = [cluster(0, 0), cluster(0, 1), cluster(1, 0), cluster(1, 1)]
    run = computing(tmp_path, monkeypatch, {"a": 2, "b": 2}, 0, features)
    folder = FeatureCache(learn.cache_setup(learn_plan(run.config))).folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_bytes(b"")  # a file where the cache folder goes
    request = learn.LearnRequest(str(run.out), folder=str(tmp_path / "photos"), holdout=0.0)
    done = learn_here(request, run.config)
    assert done.code == 0
    assert done.seen.lines[:3] == [
        ("computing features of 4 images…", ""),
        features_line(4, 0),
        (f"warning: 4 features could not be cached in '{folder}'", "yellow"),
    ]


@pytest.mark.parametrize("checkpoint", [True, False], ids=["checkpoint", "weights"])
def test_learn_loads_the_base_under_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint: bool
) -> None:
    """What the loading line names, the progress callback the base is read with, and the
    base the learned file records: the checkpoint, else the weights' tag."""
    base = tiny_base(tmp_path / "base.pth")
    config = fast_config(base if checkpoint else None)
    monkeypatch.setattr(learn, "weights_file", lambda plan, *, progress=None: (base, "name"))
    reads: list[Any] = []
    real_read = learn.read_base

    def read_base(plan: Plan, *, progress: Any) -> learn.Base:
        reads.append(progress)
        return real_read(plan, progress=progress)

    monkeypatch.setattr(learn, "read_base", read_base)
    tree = class_tree(tmp_path / "photos", {"a": 1, "b": 1})
    fill_cache(config, {tree["a"][0]: cluster(0, 0), tree["b"][0]: cluster(1, 0)}, {})
    seen = said()
    loading: list[str] = []
    sentinel = object()

    @contextlib.contextmanager
    def load(what: str) -> Any:
        loading.append(what)
        yield sentinel

    seen.console.__dict__["loading"] = load
    out = tmp_path / "m.pth"
    request = learn.LearnRequest(str(out), folder=str(tmp_path / "photos"), holdout=0.0)
    assert learn.run_learn(request, config, seen.console) == 0
    name = str(base) if checkpoint else f"{MODEL} (IMAGENET1K_V2)"
    assert loading == [name] and reads == [sentinel]
    saved = torch.load(out, weights_only=True)
    assert saved["resnext_learn"]["base"] == (str(base) if checkpoint else "IMAGENET1K_V2")


@pytest.mark.parametrize("force", [False, True])
def test_learn_over_an_existing_file_only_with_force(tmp_path: Path, force: bool) -> None:
    base = tiny_base(tmp_path / "base.pth")
    config = fast_config(base)
    tree = class_tree(tmp_path / "photos", {"a": 1, "b": 1})
    fill_cache(config, {tree["a"][0]: cluster(0, 0), tree["b"][0]: cluster(1, 0)}, {})
    out = tmp_path / "m.pth"
    out.write_bytes(b"old")
    request = learn.LearnRequest(str(out), folder=str(tmp_path / "photos"), force=force)
    if not force:
        with pytest.raises(OutputError) as info:
            learn_here(request, config)
        assert str(info.value) == f"output file '{out}' exists (use --force to overwrite it)"
        assert out.read_bytes() == b"old"
        return
    assert learn_here(request, config).code == 0
    assert torch.load(out, weights_only=True)["resnext_classes"] == ["a", "b"]
