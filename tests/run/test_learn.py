"""`resnext learn` end to end: a head learned on generated photos of three kinds.

The photos are of three kinds that differ in colour and pattern (warm solids, green
stripes, blue-and-white checks), so even a random-weights ResNeXt's pooled features
separate them; each photo's kind is known from how it was drawn, which is what the
tests expect a learned model to say. One learn per module is shared (its features are
cached, so later learns on the same files compute nothing): few images, small batches.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from PIL import Image

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
