"""run/quantize.py: the agreement line, and what the run refuses before it calibrates.

Calibrating a model takes seconds; e2e/test_quantized_cli.py and
e2e/test_quantize_agreement.py do it once each. These tests stop before that.
"""

from __future__ import annotations

import errno
import io
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from resnext_cli.console import Console
from resnext_cli.errors import ConfigError, OutputError
from resnext_cli.model import openvino_runtime as ovr
from resnext_cli.model import quantized
from resnext_cli.model.labels import imagenet_labels
from resnext_cli.model.quantized import Agreement
from resnext_cli.run import quantize as quantize_module
from resnext_cli.run.config import Config
from resnext_cli.run.quantize import QuantizeRequest, _agreement_line, run_quantize


def test_the_agreement_line_rounds_each_figure_as_printed() -> None:
    line = _agreement_line(Agreement(top1=7 / 8, top5=0.5, max_abs_dp=0.01249, images=8))
    assert line == (
        "INT8 agrees with the float model on 87.5% of the 8 photos' top-1 (top-5 sets: 50.0%; "
        "largest probability change 0.012)"
    )
    whole = _agreement_line(Agreement(top1=1.0, top5=299 / 300, max_abs_dp=0.0, images=300))
    assert whole == (
        "INT8 agrees with the float model on 100.0% of the 300 photos' top-1 (top-5 sets: "
        "99.7%; largest probability change 0.000)"
    )


def quiet_console() -> tuple[Console, io.StringIO]:
    """A console whose stderr is kept: (console, stderr)."""
    err = io.StringIO()
    return Console.on(io.BytesIO(), io.StringIO(), err, width=200, color_system=None), err


def test_an_output_that_appeared_after_the_checks_is_refused_before_any_work(
    checkpoint: Path, make_image, tmp_path: Path, loads
) -> None:
    out = tmp_path / "q.pth"
    out.write_bytes(b"made meanwhile")
    request = QuantizeRequest((str(make_image("a.png")),), str(out))
    console, _ = quiet_console()
    with pytest.raises(OutputError) as caught:
        run_quantize(request, Config(checkpoint=str(checkpoint)), console)
    assert str(caught.value) == f"output file '{out}' exists (use --force to overwrite it)"
    assert out.read_bytes() == b"made meanwhile" and loads == []


def test_photos_that_do_not_decode_are_said_and_none_left_is_refused(
    checkpoint: Path, tmp_path: Path, loads
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (photos / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    out = tmp_path / "q.pth"
    console, err = quiet_console()
    request = QuantizeRequest((str(photos),), str(out))
    with pytest.raises(ConfigError) as caught:
        run_quantize(request, Config(checkpoint=str(checkpoint)), console)
    assert str(caught.value) == (
        "no photo to calibrate with (give --calibrate with a folder of your photos)"
    )
    said = err.getvalue().splitlines()
    assert said[-2:] == [
        f"error: '{photos / 'a.jpg'}' is not an image Pillow can read",
        f"error: '{photos / 'b.png'}' is not an image Pillow can read",
    ]
    assert [getattr(f, "name", f) for f in loads] == [str(checkpoint)]  # read once
    # The claim was released and nothing was published: no file, no temporary left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


# -- the whole run in-process, the model's parts replaced by fakes ----------------------------
#
# Loading, calibrating and saving a network take seconds; here each is a fake that records
# what run/quantize.py hands it and answers what the test sets. The photos are tiny uint8
# tensors; every expected message and number is written out by hand.

MODEL = "resnext50_32x4d"
TAG = "IMAGENET1K_V2"
TRY = (
    "try more calibration photos, and more varied ones, like those you will classify (a few "
    "hundred); weights are already observed per channel, so if it stays low the model needs "
    "layers kept in float (fc first), which this command does not do: classify with the "
    "float model instead, or save this one anyway with --force"
)


@dataclass(frozen=True)
class FakeInfo:
    model: str = MODEL
    tag: str = TAG


@dataclass(frozen=True)
class FakePlan:
    info: FakeInfo = FakeInfo()
    labels: tuple[str, ...] = ("cat", "dog")
    runtime: str = "torch"
    fold_batchnorm: bool = False


class FakeTransform:
    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls = calls
        self.mean = [0.5, 0.25, 0.125]
        self.std = [0.5, 0.5, 0.25]

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls.append(("normalize", batch.clone()))
        return batch.float() / 100


@dataclass
class FakeModel:
    transform: FakeTransform
    openvino: Any = None


def crop(value: int) -> torch.Tensor:
    """A 3x2x2 uint8 'crop' filled with *value*."""
    return torch.full((3, 2, 2), value, dtype=torch.uint8)


def probs_of(batch: torch.Tensor) -> torch.Tensor:
    """The float model's fake probabilities: two classes, from each crop's first pixel."""
    first = batch[:, 0, 0, 0].float()
    return torch.stack([first / 1000, 1 - first / 1000], dim=1)


class Run:
    """One quantize run's fakes and what they saw."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.plan = FakePlan()
        self.sources: list[str] = []
        self.agree = Agreement(top1=0.9, top5=0.95, max_abs_dp=0.1234, images=0)
        self.state = ({"fc.weight": "W"}, "float.pth")
        self.model = FakeModel(FakeTransform(self.calls))
        self.folded = FakeModel(FakeTransform(self.calls), SimpleNamespace(bundle="FLOAT-BUNDLE"))
        self.out = tmp_path / "out" / "q.pth"
        self.out.parent.mkdir()
        self.load_error: BaseException | None = None
        self.write_error: BaseException | None = None
        self.written: list[Any] = []
        self.config = Config(checkpoint="my.pth")
        calls = self.calls

        def resolve(config: Config, *, purpose: str) -> FakePlan:
            calls.append(("resolve", (config, purpose)))
            return self.plan

        def load_state(plan: FakePlan, *, progress: Any) -> Any:
            calls.append(("load_state", (plan, callable(progress))))
            if self.load_error is not None:
                raise self.load_error
            return self.state

        def load_model(plan: FakePlan, *, state: Any) -> FakeModel:
            calls.append(("load_model", (plan, state)))
            return self.folded if plan.runtime == "openvino" else self.model

        def iter_sources(specs: tuple[str, ...], *, warn: Any) -> Any:
            calls.append(("iter_sources", specs))
            warn("a listed warning")
            yield from self.sources

        def prepare(source: str, plan: FakePlan, transform: FakeTransform) -> Any:
            calls.append(("prepare", source))
            assert plan is self.plan and transform is self.model.transform
            if source.startswith("bad"):
                return f"'{source}' is not an image Pillow can read"
            return crop(int(source.split("-")[1]))

        def probabilities(model: FakeModel, batch: torch.Tensor, precision: str) -> torch.Tensor:
            calls.append(("probabilities", (model is self.model, precision, batch.clone())))
            return probs_of(batch)

        def agreement(float_probs: torch.Tensor, int8_probs: torch.Tensor) -> Agreement:
            calls.append(("agreement", (float_probs, int8_probs)))
            return self.agree._replace(images=len(float_probs))

        def calibrate(model: str, state: Any, batches: list[torch.Tensor], *, name: str) -> Any:
            calls.append(("calibrate", (model, state, [b.clone() for b in batches], name)))

            def int8(x: torch.Tensor) -> torch.Tensor:
                # double logits: the run must softmax them in float32
                return torch.stack([x[:, 0, 0, 0], -x[:, 0, 0, 0]], dim=1).double()

            return int8

        def save_quantized(path: Path, model: Any, **kwargs: Any) -> Path:
            calls.append(("save_quantized", (path, model, kwargs)))
            temp = kwargs["target"].temporary()
            temp.write(b"int8 weights")
            kwargs["target"].publish(temp)
            return path

        def quantize_int8(bundle: Any, batches: list[Any], *, manifest: dict[str, Any]) -> Any:
            calls.append(("quantize_int8", (bundle, batches, manifest)))
            return "INT8-BUNDLE"

        class Network:
            def __init__(self, bundle: Any, *, int8: bool = False) -> None:
                calls.append(("Network", (bundle, int8)))

            def probabilities(self, x: Any, precision: str) -> Any:
                calls.append(("int8 probabilities", precision))
                return np.stack([x[:, 0, 0, 0], 1 - x[:, 0, 0, 0]], axis=1)

        def write_bundle_into(raw: Any, bundle: Any) -> None:
            calls.append(("write_bundle_into", bundle))
            self.written.append(raw)
            if self.write_error is not None:
                raise self.write_error
            raw.write(b"openvino int8 bundle")

        for name, fake in {
            "resolve": resolve,
            "load_state": load_state,
            "load_model": load_model,
            "iter_sources": iter_sources,
            "prepare": prepare,
            "probabilities": probabilities,
        }.items():
            monkeypatch.setattr(quantize_module, name, fake)
        monkeypatch.setattr(quantized, "agreement", agreement)
        monkeypatch.setattr(quantized, "calibrate", calibrate)
        monkeypatch.setattr(quantized, "save_quantized", save_quantized)
        monkeypatch.setattr(quantized, "quantized_engine", lambda: "x86")
        monkeypatch.setattr(ovr, "quantize_int8", quantize_int8)
        monkeypatch.setattr(ovr, "Network", Network)
        monkeypatch.setattr(ovr, "write_bundle_into", write_bundle_into)
        monkeypatch.setattr(ovr, "version", lambda: "2025.1")

    def __call__(
        self, *, quiet: bool = False, color: bool = False, **options: Any
    ) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        console = Console.on(
            io.BytesIO(),
            out,
            err,
            width=500,
            force_terminal=color,
            color_system="standard" if color else None,
        )
        console.quiet = quiet
        self.console = console
        request = QuantizeRequest(("photos",), str(self.out), **options)
        code = run_quantize(request, self.config, console)
        return code, out.getvalue(), err.getvalue()

    def seen(self, name: str) -> list[Any]:
        return [what for n, what in self.calls if n == name]

    def left(self) -> list[str]:
        """What is in the output's folder now."""
        return sorted(p.name for p in self.out.parent.iterdir())


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Run:
    return Run(monkeypatch, tmp_path)


def test_quantize_request_defaults() -> None:
    r = QuantizeRequest(("p",), "o.pth")
    assert (r.calibrate, r.output, r.force, r.batch_size, r.runtime) == (
        ("p",),
        "o.pth",
        False,
        16,
        "torch",
    )


def said_calibrating(count: int, engine: str = "x86 engine") -> str:
    return f"calibrating {MODEL} on {count} photos ({engine})…"


def use_it(out: Path) -> str:
    return f"use it with: resnext classify --checkpoint {out} --quantized -m {MODEL}"


def test_torch_run_batches_calibrates_checks_and_saves(run: Run) -> None:
    run.sources = [f"ok-{v}" for v in (10, 20, 30, 40, 50)]
    code, out, err = run(batch_size=2)
    assert code == 0 and out == f"{run.out}\n"
    assert run.out.read_bytes() == b"int8 weights" and run.left() == ["q.pth"]
    assert err.splitlines() == [
        "warning: a listed warning",
        "warning: only 5 photos: calibration is steadier with a few hundred like the ones you "
        "will classify",
        said_calibrating(5),
        "INT8 agrees with the float model on 90.0% of the 5 photos' top-1 (top-5 sets: 95.0%; "
        "largest probability change 0.123)",
        use_it(run.out),
    ]
    assert run.seen("resolve") == [(run.config, "calibrate")]
    assert run.seen("load_state") == [(run.plan, True)]
    assert run.seen("load_model") == [(run.plan, run.state)]
    assert run.seen("iter_sources") == [("photos",)]
    # Batches of two, in order, the last one short: what the float model and calibration see.
    batches = [[10, 20], [30, 40], [50]]
    want = [torch.stack([crop(v) for v in b]) for b in batches]
    assert [b.tolist() for b in run.seen("normalize")] == [b.tolist() for b in want]
    ((model, state, normalized, name),) = run.seen("calibrate")
    assert (model, state, name) == (MODEL, {"fc.weight": "W"}, "float.pth")
    assert [b.tolist() for b in normalized] == [(b.float() / 100).tolist() for b in want]
    floats = run.seen("probabilities")
    assert [(mine, precision) for mine, precision, _ in floats] == [(True, "fp32")] * 3
    assert [b.tolist() for _, _, b in floats] == [b.tolist() for b in want]
    ((float_probs, int8_probs),) = run.seen("agreement")
    values = torch.tensor([10.0, 20, 30, 40, 50])
    assert torch.equal(float_probs, torch.stack([values / 1000, 1 - values / 1000], dim=1))
    assert int8_probs.dtype == torch.float32
    # softmax of (v/100, -v/100): the first class has 1 / (1 + exp(-2v/100))
    first = 1 / (1 + torch.exp(-2 * values / 100))
    assert torch.allclose(int8_probs, torch.stack([first, 1 - first], dim=1), atol=1e-6)
    ((path, int8, kwargs),) = run.seen("save_quantized")
    assert path == run.out and callable(int8)
    assert {k: v for k, v in kwargs.items() if k != "target"} == {
        "model_name": MODEL,
        "labels_count": 2,
        "source": "float.pth",
        "weights": TAG,
        "names": ("cat", "dog"),
    }
    assert kwargs["target"].path == run.out


def test_imagenet_labels_are_not_written_into_the_file(run: Run) -> None:
    run.plan = FakePlan(labels=imagenet_labels())
    run.sources = ["ok-1"]
    code, _, _ = run(quiet=True)
    assert code == 0
    ((_, _, kwargs),) = run.seen("save_quantized")
    assert kwargs["names"] is None and kwargs["labels_count"] == 1000


def test_one_batch_by_default_and_enough_photos_warn_nothing(run: Run) -> None:
    run.sources = [f"ok-{v % 200}" for v in range(100)]
    code, out, err = run()
    assert (code, out) == (0, f"{run.out}\n")
    # 100 photos in batches of 16: 6 whole ones and one of 4.
    assert [len(b) for b in run.seen("normalize")] == [16] * 6 + [4]
    assert err.splitlines() == [
        "warning: a listed warning",
        said_calibrating(100),
        "INT8 agrees with the float model on 90.0% of the 100 photos' top-1 (top-5 sets: "
        "95.0%; largest probability change 0.123)",
        use_it(run.out),
    ]


def test_ninety_nine_photos_warn(run: Run) -> None:
    run.sources = [f"ok-{v}" for v in range(99)]
    _, _, err = run()
    assert err.splitlines()[1] == (
        "warning: only 99 photos: calibration is steadier with a few hundred like the ones "
        "you will classify"
    )


def test_only_the_first_thousand_photos_are_used(run: Run) -> None:
    run.sources = [f"ok-{v % 250}" for v in range(1000)] + ["ok-7", "bad-after"]
    code, _, err = run(batch_size=500)
    assert code == 0
    assert len(run.seen("prepare")) == 1000  # the rest are not even read
    assert err.splitlines()[:3] == [
        "warning: a listed warning",
        "using the first 1000 photos (a few hundred is plenty)",
        said_calibrating(1000),
    ]


def test_photos_that_fail_are_said_and_make_the_run_exit_1(run: Run) -> None:
    run.sources = ["ok-5", "bad-1.jpg", "ok-6", "bad-2.jpg"]
    code, out, err = run(color=True)
    assert code == 1 and out == f"{run.out}\n" and run.out.exists()
    # A terminal: the loading spinner's codes are there too; the error lines are whole, red.
    lines = [line for line in err.splitlines() if "error" in line]
    assert lines == [
        "\x1b[31merror: 'bad-1.jpg' is not an image Pillow can read\x1b[0m",
        "\x1b[31merror: 'bad-2.jpg' is not an image Pillow can read\x1b[0m",
    ]
    assert [b.shape[0] for b in run.seen("normalize")] == [2]


def test_quiet_says_only_the_output(run: Run) -> None:
    run.sources = ["ok-5", "bad-1.jpg"]
    code, out, err = run(quiet=True)
    assert (code, out, err) == (1, f"{run.out}\n", "")


def test_under_ninety_percent_is_refused_and_nothing_is_written(run: Run) -> None:
    run.sources = ["ok-1", "ok-2"]
    run.agree = Agreement(top1=0.8999, top5=0.5, max_abs_dp=0.25, images=0)
    code, out, err = run(quiet=True)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "error: INT8 agrees with the float model on 90.0% of the 2 photos' top-1 (top-5 sets: "
        f"50.0%; largest probability change 0.250): under 90%, the INT8 model is not usable "
        f"as it is, and '{run.out}' was not written",
        TRY,
    ]
    assert run.seen("save_quantized") == [] and run.left() == []


def test_under_ninety_percent_with_force_is_saved_with_a_warning(run: Run) -> None:
    run.sources = ["ok-1", "ok-2"]
    run.agree = Agreement(top1=0.5, top5=1.0, max_abs_dp=0.5, images=0)
    code, out, err = run(force=True)
    assert (code, out) == (0, f"{run.out}\n") and run.left() == ["q.pth"]
    assert err.splitlines()[-3:] == [
        "INT8 agrees with the float model on 50.0% of the 2 photos' top-1 (top-5 sets: 100.0%; "
        "largest probability change 0.500)",
        "warning: under 90%, the INT8 model is not usable as it is; saved anyway (--force)",
        use_it(run.out),
    ]


def test_force_replaces_a_file_that_was_there(run: Run) -> None:
    run.out.write_bytes(b"old")
    run.sources = ["ok-1"]
    code, _, _ = run(force=True, quiet=True)
    assert code == 0 and run.out.read_bytes() == b"int8 weights" and run.left() == ["q.pth"]


@pytest.mark.parametrize(
    ("checkpoint", "what"),
    [("my.pth", "my.pth"), (None, f"{MODEL} ({TAG})")],
    ids=["checkpoint", "weights"],
)
def test_interrupted_while_loading_names_what_and_leaves_nothing(
    run: Run, checkpoint: str | None, what: str
) -> None:
    run.config = Config(checkpoint=checkpoint)
    run.load_error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        run()
    assert run.console.err.file.getvalue() == (
        f"interrupted while loading {what}: nothing was done\n"
    )
    assert run.left() == []


def test_no_photo_left_releases_the_claim(run: Run) -> None:
    run.sources = ["bad-1.jpg"]
    with pytest.raises(ConfigError):
        run(quiet=True)
    assert run.left() == [] and run.seen("calibrate") == []
    # Released: the same output can be claimed again at once.
    run.sources = ["ok-1"]
    assert run(quiet=True)[0] == 0 and run.left() == ["q.pth"]


# -- --runtime openvino ------------------------------------------------------------------------


def test_openvino_run_calibrates_the_folded_body_and_saves_the_bundle(run: Run) -> None:
    run.sources = ["ok-51", "ok-102", "ok-204"]
    code, out, err = run(runtime="openvino", batch_size=2)
    assert code == 0 and out == f"{run.out}\n"
    assert run.out.read_bytes() == b"openvino int8 bundle" and run.left() == ["q.pth"]
    assert err.splitlines() == [
        "warning: a listed warning",
        "warning: only 3 photos: calibration is steadier with a few hundred like the ones you "
        "will classify",
        f"calibrating {MODEL} on 3 photos (OpenVINO, NNCF)…",
        "INT8 agrees with the float model on 90.0% of the 3 photos' top-1 (top-5 sets: 95.0%; "
        "largest probability change 0.123)",
        use_it(run.out),
    ]
    assert run.seen("calibrate") == [] and run.seen("save_quantized") == []
    ((plain, _), (folded, state)) = run.seen("load_model")
    assert plain == run.plan and state == run.state
    assert folded == FakePlan(runtime="openvino", fold_batchnorm=True)
    ((bundle, batches, manifest),) = run.seen("quantize_int8")
    assert bundle == "FLOAT-BUNDLE"
    assert manifest == {
        "kind": "int8",
        "model": MODEL,
        "weights": TAG,
        "source": "float.pth",
        "openvino": "2025.1",
    }
    # (v / 255 - mean) / std per channel, in batches of two.
    mean, std = np.array([0.5, 0.25, 0.125]), np.array([0.5, 0.5, 0.25])
    want = [
        ((np.array(vs, dtype=np.float64)[:, None] / 255 - mean) / std) for vs in ([51, 102], [204])
    ]
    assert [b.shape for b in batches] == [(2, 3, 2, 2), (1, 3, 2, 2)]
    assert all(b.dtype == np.float32 for b in batches)
    for got, expected in zip(batches, want, strict=True):
        assert np.allclose(got[:, :, 0, 0], expected, atol=1e-6)
    assert run.seen("Network") == [("INT8-BUNDLE", True)]
    assert run.seen("int8 probabilities") == ["int8", "int8"]
    assert run.seen("write_bundle_into") == ["INT8-BUNDLE"]
    floats = run.seen("probabilities")
    assert [(mine, precision) for mine, precision, _ in floats] == [(True, "fp32")] * 2
    ((float_probs, int8_probs),) = run.seen("agreement")
    values = torch.tensor([51.0, 102, 204])
    assert torch.equal(float_probs, torch.stack([values / 1000, 1 - values / 1000], dim=1))
    first = torch.tensor([w[0] for b in want for w in b[:, :1]], dtype=torch.float32)
    assert torch.allclose(int8_probs, torch.stack([first, 1 - first], dim=1), atol=1e-6)


def test_openvino_under_ninety_percent_is_refused(run: Run) -> None:
    run.sources = ["ok-1", "bad-x.jpg"]
    run.agree = Agreement(top1=0.8999, top5=0.25, max_abs_dp=0.01, images=0)
    code, out, err = run(runtime="openvino", quiet=True)
    assert (code, out) == (1, "") and run.left() == []
    assert err == (
        "error: INT8 agrees with the float model on 90.0% of the 1 photos' top-1 (top-5 sets: "
        f"25.0%; largest probability change 0.010): below 90%, so '{run.out}' was not saved "
        "(calibrate with more photos like the ones you will classify, or save it anyway with "
        "--force)\n"
    )
    assert run.seen("write_bundle_into") == []


def test_openvino_under_ninety_percent_with_force_warns_and_a_failure_exits_1(run: Run) -> None:
    run.sources = ["ok-1", "bad-x.jpg"]
    run.agree = Agreement(top1=0.0, top5=0.0, max_abs_dp=1.0, images=0)
    code, out, err = run(runtime="openvino", force=True)
    assert (code, out) == (1, f"{run.out}\n") and run.left() == ["q.pth"]
    assert err.splitlines()[-3:] == [
        "INT8 agrees with the float model on 0.0% of the 1 photos' top-1 (top-5 sets: 0.0%; "
        "largest probability change 1.000)",
        "warning: saved with --force although below 90% agreement",
        use_it(run.out),
    ]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (OSError("the disk went away"), "the disk went away"),
    ],
    ids=["strerror", "no-strerror"],
)
def test_openvino_write_failure_is_one_line_and_leaves_nothing(
    run: Run, error: OSError, reason: str
) -> None:
    run.sources = ["ok-1"]
    run.write_error = error
    with pytest.raises(OutputError) as caught:
        run(runtime="openvino", quiet=True)
    assert str(caught.value) == f"cannot write '{run.out}': {reason} (choose a writable folder)"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert run.written[0].closed and run.left() == []


def test_openvino_other_write_errors_go_through_and_close_the_temporary(run: Run) -> None:
    run.sources = ["ok-1"]
    run.write_error = RuntimeError("bug")
    with pytest.raises(RuntimeError, match=r"^bug$"):
        run(runtime="openvino", quiet=True)
    assert run.written[0].closed and run.left() == []
