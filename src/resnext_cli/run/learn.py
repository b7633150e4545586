"""`resnext learn`: a new head on frozen ResNeXt features, from folders of the user's classes.

Examples come from FOLDER (one subfolder per class, as `resnext sort` writes them) or from
a --from list of path,label (run/examples.py). Everything that can be refused is refused
before a feature is computed. Features come from the classify pipeline (same
preprocessing, precision, batching) through a cache keyed by each file's identity, so a
re-learn computes only what changed. The head is scored on a stratified held-out share,
refitted on every image, and saved as an ordinary torchvision state dict with the class
names beside it.

torch is imported only where it is needed: features computed by torch, or a base
checkpoint that model/torch_file.py does not read. A re-learn through OpenVINO (or with
every feature cached) fits in numpy and copies the base weights byte for byte into the
new checkpoint, so it starts no torch at all.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnext_cli.console import Console
from resnext_cli.errors import (
    CheckpointError,
    ConfigError,
    ExitStatus,
    InputError,
    OutputError,
    Terminated,
)
from resnext_cli.files import OutputTarget
from resnext_cli.inputs.sources import Source, open_source
from resnext_cli.model import torch_file, torch_write
from resnext_cli.model.checkpoint import CLASSES_KEY, holds_int8, state_entries, unwrap
from resnext_cli.model.feature_cache import Entry, FeatureCache, Identity, setup_key
from resnext_cli.model.head import Head, Score, fit_head, score, stratified_split
from resnext_cli.run.config import Config
from resnext_cli.run.engine import LocalEngine
from resnext_cli.run.examples import (
    FEW_IMAGES,
    Example,
    Tally,
    check_classes,
    examples_from_folder,
    examples_from_list,
    shown,
)
from resnext_cli.run.network import State, load_model, load_state, transform_for, weights_file
from resnext_cli.run.plan import Plan, resolve

if TYPE_CHECKING:
    from resnext_cli.inputs.http import Progress

# Held-out accuracy under this: said plainly.
POOR_ACCURACY = 0.7
# The key of what the learn was, beside the state dict and the class names.
LEARN_KEY = "resnext_learn"
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class LearnRequest:
    """What `resnext learn` was asked."""

    output: str
    folder: str | None = None
    records: str | None = None  # --from
    force: bool = False
    holdout: float = 0.2
    seed: int = 0
    allow_duplicates: bool = False


# -- the model and the cache -----------------------------------------------------------------


def cache_setup(plan: Plan) -> str:
    """The cache folder of this model setup: all that changes the feature numbers."""
    t = transform_for(plan)
    checkpoint = plan.checkpoint
    base: object = plan.info.tag
    if checkpoint is not None:
        base = checkpoint
        if "://" not in checkpoint:
            st = os.stat(checkpoint)
            base = [str(Path(checkpoint).absolute()), st.st_size, st.st_mtime_ns]
    return setup_key(
        {
            "format": _CACHE_FORMAT,
            "model": plan.info.model,
            "base": base,
            "resize": t.resize_size,
            "crop": t.crop_size,
            # As str(InterpolationMode.BILINEAR) says it (older keys stay valid), without
            # importing torchvision.
            "interpolation": "InterpolationMode." + t.interpolation_name.upper().replace("-", "_"),
            "mean": t.mean,
            "std": t.std,
            "upright": plan.decode.upright,
            "plain_rgb": plan.decode.plain_rgb,
            "draft": plan.decode.draft_min_side,
            "truncated": plan.decode.allow_truncated,
            "decode_on": plan.decode_on,
            "precision": plan.precision,
            "fold": plan.fold_batchnorm,
            "device": plan.device_type,
        }
    )


def _digest(example: Example) -> bytes:
    """sha256 of the image's bytes (InputError if it cannot be read)."""
    sha = hashlib.sha256()
    with open_source(Source(input=example.input, path=example.path)) as fp:
        while chunk := fp.read(1 << 20):
            sha.update(chunk)
    return sha.digest()


def look_up(examples: list[Example], cache: FeatureCache, tally: Tally, console: Console) -> None:
    """Fill in identity, digest and (when cached) the feature of each example; drop the
    unreadable ones."""
    kept = []
    for example in examples:
        try:
            example.identity = Identity.of(example.path)
            entry = cache.get(example.identity)
            if entry is not None:
                example.digest, example.feature = entry.digest, entry.feature
            else:
                example.digest = _digest(example)
        except InputError as exc:
            tally.add(exc, console)
            continue
        except OSError as exc:
            tally.add(InputError("unreadable", f"cannot read '{example.input}': {exc}"), console)
            continue
        kept.append(example)
    examples[:] = kept


def check_duplicates(examples: list[Example], *, allow: bool, console: Console) -> None:
    """Refuse the same bytes in two classes (unless allowed: then say so)."""
    first: dict[bytes, Example] = {}
    for example in examples:
        assert example.digest is not None
        seen = first.setdefault(example.digest, example)
        if seen is example or seen.label == example.label:
            continue
        message = (
            f"'{seen.input}' (class '{shown(seen.label)}') and '{example.input}' "
            f"(class '{shown(example.label)}') are the same image"
        )
        if not allow:
            raise ConfigError(f"{message} (remove one, or give --allow-duplicates to keep both)")
        console.warn(f"{message}; kept in both classes (--allow-duplicates)")


def compute_features(
    engine: LocalEngine,
    examples: list[Example],
    cache: FeatureCache,
    tally: Tally,
    console: Console,
) -> None:
    """Compute and cache the features of the examples the cache did not have."""
    todo = [e for e in examples if e.feature is None]
    if not todo:
        return
    sources = [Source(input=e.input, path=e.path) for e in todo]
    console.note(f"computing features of {len(todo)} images…")
    failed: set[int] = set()
    with console.counting("features") as (tick, set_total):
        set_total(len(todo))
        # One outcome per source, in order.
        outcomes = engine.features_sources(sources)
        for example, (_source, outcome) in zip(todo, outcomes, strict=True):
            tick()
            if isinstance(outcome, InputError):
                tally.add(outcome, console)
                failed.add(id(example))
                continue
            example.feature = outcome
            assert example.identity is not None and example.digest is not None
            cache.put(example.identity, Entry(example.digest, outcome))
    if failed:
        examples[:] = [e for e in examples if id(e) not in failed]


# -- fitting and saying how it went ----------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def report_score(result: Score, labels: list[str], console: Console) -> None:
    """Held-out accuracy, per-class precision and recall, the most confused pairs."""
    from rich.table import Table
    from rich.text import Text

    console.note(f"held-out accuracy: {result.accuracy:.1%} of {result.total} images")
    if console.quiet:
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("class")
    table.add_column("held out", justify="right")
    table.add_column("precision", justify="right")
    table.add_column("recall", justify="right")
    for k, label in enumerate(labels):
        table.add_row(
            Text(shown(label)),
            str(result.support(k)),
            _percent(result.precision(k)),
            _percent(result.recall(k)),
        )
    console.err.print(table)
    for true, predicted, count in result.confused():
        console.note(
            f"confused: '{shown(labels[true])}' taken for '{shown(labels[predicted])}' "
            f"{count} {'time' if count == 1 else 'times'}"
        )


def _warn_small(labels: list[str], counts: list[int], console: Console) -> None:
    for label, count in zip(labels, counts, strict=True):
        if count < FEW_IMAGES:
            console.warn(
                f"class '{shown(label)}' has only {count} "
                f"{'image' if count == 1 else 'images'}: add a few more ({FEW_IMAGES} or "
                "more; 20 or more is better)"
            )


@dataclass
class Base:
    """The base model's weights, which the learned checkpoint keeps beside its new fc:
    references to the stored tensors (read by model/torch_file.py, copied byte for byte by
    model/torch_write.py, no torch) or, from a file torch_file does not read, the state dict
    torch loaded."""

    tensors: dict[str, Any]  # torchvision's keys: StoredTensor references or torch tensors
    stored: torch_file.StoredFile | None = None
    state: State | None = None

    def classes(self, default: int) -> int:
        """The rows of the base fc (what the network outputs), else *default*."""
        fc = self.tensors.get("fc.weight")
        return int(fc.shape[0]) if fc is not None and len(fc.shape) == 2 else default

    def __enter__(self) -> Base:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.stored is not None:
            self.stored.close()


def read_base(plan: Plan, *, progress: Progress | None) -> Base:
    """The base weights (fetched if need be): their tensors found without torch where the
    file is torch's zip format of plain tensors, else loaded by torch (which also says what
    is wrong with a file that is no checkpoint)."""
    path, _ = weights_file(plan, progress=progress)
    try:
        stored = torch_file.StoredFile(path)
    except (torch_file.Unsupported, OSError):
        stored = None
    if stored is not None:
        unwrapped = unwrap(stored.tree)
        tensors = (
            state_entries(unwrapped, torch_file.StoredTensor) if isinstance(unwrapped, dict) else {}
        )
        if tensors and not holds_int8(stored.tree):
            return Base(tensors, stored=stored)
        stored.close()
    state = load_state(plan, progress=progress)
    return Base(dict(state[0]), state=state)


def learned_state(base: Base, head: Head) -> dict[str, Any]:
    """The base model's state dict with the new fc, in torchvision's key layout."""
    out = {k: v for k, v in base.tensors.items() if k not in ("fc.weight", "fc.bias")}
    if base.stored is not None:
        out["fc.weight"], out["fc.bias"] = head.weight, head.bias
        return out
    import torch

    out["fc.weight"] = torch.from_numpy(head.weight.astype(np.float32))
    out["fc.bias"] = torch.from_numpy(head.bias.astype(np.float32))
    return out


def publish_checkpoint(payload: dict[str, Any], base: Base, target: OutputTarget) -> None:
    """Write *payload* the one way outputs are written (files.py): a temporary file of this
    tool's beside -o, published onto nothing or the file seen when the run began (a file
    that appeared meanwhile only with --force; a link or a device never replaced), so an
    interrupted learn leaves no partial file. Written by torch_write where torch_file read
    the base weights (their bytes copied), else by torch.save."""
    try:
        temp = target.temporary()
        try:
            if base.stored is not None:
                torch_write.write_checkpoint(temp, payload, source=base.stored)
            else:
                import torch

                torch.save(payload, temp)
        except BaseException:
            temp.close()
            raise
        target.publish(temp)
    except torch_file.Unsupported as exc:  # the base checkpoint changed or is damaged
        raise CheckpointError(
            f"cannot copy the base weights into '{target.path}': {exc} (nothing was written)"
        ) from None
    except OSError as exc:
        raise OutputError(
            f"cannot write '{target.path}': {exc.strerror or exc} (choose a writable folder)"
        ) from None


def run_learn(request: LearnRequest, config: Config, console: Console) -> int:
    """Find, check, compute (or reuse) features, fit, score, refit, save; exit status."""
    out = Path(request.output)
    # Checked and locked before any work, as every output is (files.py).
    target = OutputTarget.claim(out, force=request.force)
    try:
        return _learn(request, config, console, out, target)
    finally:
        target.release()


def _learn(
    request: LearnRequest, config: Config, console: Console, out: Path, target: OutputTarget
) -> int:
    tally = Tally()
    if request.records is not None:
        examples = examples_from_list(request.records)
    else:
        assert request.folder is not None
        examples = examples_from_folder(request.folder, console, tally)
    labels = sorted({e.label for e in examples})
    plan = resolve(replace(config, topk=1, labels=None, categories=None, embeddings=False))
    cache = FeatureCache(cache_setup(plan))
    look_up(examples, cache, tally, console)
    where = f"'{request.records or request.folder}'"
    check_classes(labels, examples, where=where, hint="fix the unreadable images")
    check_duplicates(examples, allow=request.allow_duplicates, console=console)
    what = config.checkpoint or f"{plan.info.model} ({plan.info.tag})"
    with console.loading(what) as bar:
        base = read_base(plan, progress=bar)
    with base:
        try:
            if any(e.feature is None for e in examples):
                compute_features(_engine(plan, base), examples, cache, tally, console)
        except (KeyboardInterrupt, Terminated):
            console.say(
                f"interrupted: nothing was saved ({cache.stats.computed} new features are cached; "
                "run again to go on)",
                style="yellow",
            )
            raise
        console.note(
            f"features: {cache.stats.computed} computed, {cache.stats.hits} from the cache "
            f"({plan.info.model}, {plan.describe()})"
        )
        if cache.stats.write_errors:
            console.warn(
                f"{cache.stats.write_errors} features could not be cached in '{cache.folder}'"
            )
        check_classes(labels, examples, where=where, hint="fix the unreadable images")
        index = {label: k for k, label in enumerate(labels)}
        x = np.stack([e.feature for e in examples if e.feature is not None])
        y = np.array([index[e.label] for e in examples], dtype=np.int64)
        counts = np.bincount(y, minlength=len(labels)).tolist()
        console.note(f"learning {len(labels)} classes from {len(examples)} images")
        _warn_small(labels, counts, console)
        train, held = stratified_split(y, len(labels), request.holdout, seed=request.seed)
        start: Head | None = None
        accuracy: float | None = None
        if held.size:
            start = fit_head(x[train], y[train], len(labels))
            result = score(start, x[held], y[held], len(labels))
            accuracy = result.accuracy
            report_score(result, labels, console)
            if accuracy < POOR_ACCURACY:
                console.warn(
                    f"held-out accuracy is only {accuracy:.0%}: add more images per class, "
                    "move misfiled ones, or merge classes that look alike"
                )
        elif request.holdout > 0:
            console.warn("too few images to hold any out: the model is not scored")
        head = fit_head(x, y, len(labels), start=start)
        payload = {
            "state_dict": learned_state(base, head),
            CLASSES_KEY: list(labels),
            LEARN_KEY: {
                "model": plan.info.model,
                "base": config.checkpoint or plan.info.tag,
                "images": len(examples),
                "holdout": request.holdout,
                "holdout_accuracy": accuracy,
                "seed": request.seed,
                "precision": plan.precision,
            },
        }
        publish_checkpoint(payload, base, target)
        if tally.total:
            console.warn(tally.line())
        console.note(f"saved '{out}': {len(labels)} classes, fitted on all {len(examples)} images")
        model_flag = "" if plan.info.model == "resnext50_32x4d" else f" -m {plan.info.model}"
        console.note(f"use it with: resnext classify --checkpoint {out}{model_flag} PHOTOS")
        console.stdout.write(f"{out}\n")
        return ExitStatus.SOME_FAILED if tally.total else ExitStatus.OK


def _engine(plan: Plan, base: Base) -> LocalEngine:
    """The classify engine on the base model; its fc is not used, so any class count goes."""
    classes = base.classes(len(plan.labels))
    plan = replace(plan, labels=tuple(str(i) for i in range(classes)))
    return LocalEngine(load_model(plan, state=base.state))
