"""`resnext learn`: a new head on frozen ResNeXt features, from folders of the user's classes.

Examples come from FOLDER (one subfolder per class, as `resnext sort` writes them) or from
a --from list of path,label. Everything that can be refused is refused before a feature
is computed. Features come from the classify pipeline (same preprocessing, precision,
batching) through a cache keyed by each file's identity, so a re-learn computes only what
changed. The head is scored on a stratified held-out share, refitted on every image, and
saved as an ordinary torchvision state dict with the class names beside it.

torch is imported only where it is needed: features computed by torch, or a base
checkpoint that model/torch_file.py does not read. A re-learn through OpenVINO (or with
every feature cached) fits in numpy and copies the base weights byte for byte into the
new checkpoint, so it starts no torch at all.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnext_cli.console import Console, printable
from resnext_cli.errors import ConfigError, ExitStatus, InputError, OutputError, Terminated
from resnext_cli.files import FileProblem, OutputTarget, read_user_file
from resnext_cli.inputs.sources import Source, iter_sources, open_source
from resnext_cli.model import torch_file, torch_write
from resnext_cli.model.checkpoint import CLASSES_KEY, holds_int8, state_entries, unwrap
from resnext_cli.model.feature_cache import Entry, FeatureCache, Identity, setup_key
from resnext_cli.model.head import Head, Score, fit_head, score, stratified_split
from resnext_cli.records import parse_json
from resnext_cli.run.config import Config
from resnext_cli.run.engine import LocalEngine
from resnext_cli.run.network import State, load_model, load_state, transform_for, weights_file
from resnext_cli.run.plan import Plan, resolve
from resnext_cli.sort.names import FAILED_FOLDER, UNCERTAIN_FOLDER

if TYPE_CHECKING:
    from resnext_cli.inputs.http import Progress

# Folders sort makes that hold no class.
SKIPPED_FOLDERS = (UNCERTAIN_FOLDER, FAILED_FOLDER)
# Fewer images than this in a class: said plainly.
FEW_IMAGES = 5
# Held-out accuracy under this: said plainly.
POOR_ACCURACY = 0.7
# The key of what the learn was, beside the state dict and the class names.
LEARN_KEY = "resnext_learn"
MAX_LIST_BYTES = 100 << 20
_LIST_HELP = (
    'give a CSV with a header row naming them, or JSON Lines of {"path": ..., "label": ...}'
)
_SHOWN = 60  # a class name in a message is cut after this many characters
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


@dataclass
class Example:
    """One image with its class, as found; digest and feature once known."""

    input: str
    path: Path
    label: str
    identity: Identity | None = None
    digest: bytes | None = None
    feature: np.ndarray[Any, Any] | None = None


@dataclass
class Tally:
    """Images skipped along the way, by error type."""

    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, error: InputError, console: Console) -> None:
        self.skipped[error.error_type] = self.skipped.get(error.error_type, 0) + 1
        console.note(f"error: {error.message}", style="red")

    @property
    def total(self) -> int:
        return sum(self.skipped.values())

    def line(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped.items()))
        return f"skipped {self.total} images that could not be used ({kinds})"


def shown(label: str) -> str:
    """A class name as a message quotes it: escaped, and cut when very long."""
    text = printable(label)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


# -- finding the examples --------------------------------------------------------------------


def examples_from_folder(root: str, console: Console, tally: Tally) -> list[Example]:
    """One class per subfolder of *root*; sort's _uncertain/, _failed/ and hidden entries
    (its journal) are left out, and said so in one line."""
    path = Path(root)
    if not path.exists():
        raise ConfigError(
            f"folder '{root}' does not exist (give a folder with one subfolder per class)"
        )
    if not path.is_dir():
        raise ConfigError(
            f"'{root}' is a file, not a folder (give a folder with one subfolder per class, "
            "or --from FILE with a path,label list)"
        )
    left_out: list[str] = []
    classes: list[tuple[str, Path]] = []
    with os.scandir(path) as listing:
        for entry in sorted(listing, key=lambda e: e.name):
            if entry.name.startswith(".") or entry.name in SKIPPED_FOLDERS:
                left_out.append(entry.name + ("/" if entry.is_dir() else ""))
            elif entry.is_dir():
                classes.append((entry.name, Path(entry.path)))
            else:
                left_out.append(entry.name)
    if left_out:
        names = ", ".join(f"'{printable(n)}'" for n in left_out[:5])
        more = f" and {len(left_out) - 5} more" if len(left_out) > 5 else ""
        console.note(f"left out of '{printable(root)}': {names}{more} (not class folders)")

    def warn(message: str) -> None:
        if not message.startswith("no images found in folder"):  # said per class below
            console.warn(message)

    examples: list[Example] = []
    for label, folder in classes:
        for source in iter_sources([str(folder)], warn=warn):
            if source.error is not None:
                tally.add(source.error, console)
                continue
            assert source.path is not None
            examples.append(Example(source.input, source.path, label))
    check_classes(
        [label for label, _ in classes],
        examples,
        where=f"'{printable(root)}'",
        hint="make one subfolder of images per class",
    )
    return examples


def _read_list(name: str) -> str:
    """The text of a --from file: a regular file of at most MAX_LIST_BYTES, UTF-8."""
    try:
        data = read_user_file(name, max_bytes=MAX_LIST_BYTES)
    except FileProblem as exc:
        if exc.kind == "missing":
            raise ConfigError(f"--from file '{name}' does not exist ({_LIST_HELP})") from None
        if exc.kind == "folder":
            raise ConfigError(f"--from '{name}' is a folder ({_LIST_HELP})") from None
        if exc.kind == "not_regular":
            raise ConfigError(f"--from '{name}' is not a regular file ({_LIST_HELP})") from None
        if exc.kind == "too_large":
            raise ConfigError(
                f"--from file '{name}' is over the {MAX_LIST_BYTES}-byte limit"
            ) from None
        raise ConfigError(f"cannot read --from file '{name}': {exc.reason}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"--from file '{name}' is not UTF-8 text ({_LIST_HELP})") from None


def _missing_columns(name: str) -> ConfigError:
    return ConfigError(f"--from file '{name}' has no 'path' and 'label' columns ({_LIST_HELP})")


def _rows(name: str, text: str) -> Iterator[tuple[int, Any, Any]]:
    """(line number, path, label) of each row of a CSV or JSON Lines list."""
    is_json = name.lower().endswith((".jsonl", ".ndjson", ".json")) or text.lstrip().startswith("{")
    if not is_json:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            fields = reader.fieldnames or []
            label_column = (
                "label" if "label" in fields else "label_1" if "label_1" in fields else None
            )
            if "path" not in fields or label_column is None:
                raise _missing_columns(name)
            for row in reader:
                yield reader.line_num, row.get("path"), row.get(label_column)
        except csv.Error as exc:  # a field over csv's limit
            # line_num counts the lines of the rows read before: this row starts one later.
            raise ConfigError(
                f"--from file '{name}' line {reader.line_num + 1} is not CSV ({exc}; {_LIST_HELP})"
            ) from None
        return
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = parse_json(line)
        except ValueError:  # not JSON, nested too deeply, or NaN
            item = None
        if not isinstance(item, dict):
            raise ConfigError(
                f"--from file '{name}' line {number} is not a JSON object ({_LIST_HELP})"
            )
        if "error" in item and "label" not in item:
            continue  # a classify record of an image that failed: nothing to learn
        label = item.get("label")
        if label is None:  # a classify record: its top-1 label, as a person reviewed it
            predictions = item.get("predictions")
            if isinstance(predictions, list) and predictions and isinstance(predictions[0], dict):
                label = predictions[0].get("label")
        if "path" not in item or label is None:
            raise ConfigError(
                f"--from file '{name}' line {number} has no 'path' and 'label' ({_LIST_HELP})"
            )
        yield number, item["path"], label


def examples_from_list(name: str) -> list[Example]:
    """The examples a --from CSV or JSON Lines file lists; relative paths are taken from
    the file's folder. Every path must be an existing file."""
    text = _read_list(name)
    base = Path(name).parent
    examples: list[Example] = []
    labels: list[str] = []
    for number, raw_path, raw_label in _rows(name, text):
        where = f"--from file '{name}' line {number}"
        if not isinstance(raw_path, str) or not raw_path:
            raise ConfigError(f"{where} has no path (give every line a path)")
        if not isinstance(raw_label, str):
            raise ConfigError(f"{where}: the label is not text (give a class name)")
        if not raw_label.strip():
            raise ConfigError(f"{where} has an empty label (give every path a class name)")
        path = Path(raw_path)
        if not path.is_absolute():
            path = base / path
        try:
            ok, there = path.is_file(), path.exists()
        except (OSError, ValueError):
            ok = there = False
        if there and not ok:
            raise ConfigError(
                f"{where}: '{printable(raw_path)}' is not a regular file (a folder, pipe or "
                "device; fix the path, or remove the line)"
            )
        if not ok:
            raise ConfigError(
                f"{where}: no such file '{printable(raw_path)}' (fix the path, or remove the line)"
            )
        if raw_label not in labels:
            labels.append(raw_label)
        examples.append(Example(raw_path, path, raw_label))
    check_classes(sorted(labels), examples, where=f"'{name}'", hint="give at least two labels")
    return examples


def check_classes(labels: list[str], examples: list[Example], *, where: str, hint: str) -> None:
    """At least two classes, no more classes than images, and an image in every class."""
    if len(labels) < 2:
        found = "none" if not labels else f"only '{shown(labels[0])}'"
        raise ConfigError(f"learning needs at least two classes; {where} has {found} ({hint})")
    if len(labels) > len(examples):
        raise ConfigError(
            f"{len(labels)} classes but only {len(examples)} images (give at least one image "
            f"per class; {FEW_IMAGES} or more is better)"
        )
    have = {e.label for e in examples}
    for label in labels:
        if label not in have:
            raise ConfigError(
                f"class '{shown(label)}' has no readable image (add images to it, or remove it)"
            )


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
