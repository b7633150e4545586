"""The options `classify` and `sort` share, declared once for click."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from resnext_cli.console import Console
from resnext_cli.imaging.limits import DEFAULT_MAX_PIXELS
from resnext_cli.model.registry import MODELS
from resnext_cli.model.weights import OFFLINE_ENV
from resnext_cli.run.config import DECODERS, PRECISIONS, RUNTIME_ENV, RUNTIMES

MODEL_HELP = f"ResNeXt variant: {', '.join(MODELS)} (or 50, 101, 101-64)."
pass_console = click.make_pass_decorator(Console)


def debug_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--debug", is_flag=True, help="Show tracebacks on errors.", expose_value=False
    )(f)


_RUN_OPTIONS = [
    click.option("-m", "--model", default="resnext50_32x4d", show_default=True, help=MODEL_HELP),
    click.option(
        "-w",
        "--weights",
        default="DEFAULT",
        show_default=True,
        help="torchvision weights tag: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2 (with "
        "--quantized: IMAGENET1K_FBGEMM_V1, IMAGENET1K_FBGEMM_V2).",
    ),
    click.option(
        "--checkpoint",
        metavar="PATH|URL",
        help="State dict in torchvision's layout to use instead of the weights.",
    ),
    click.option(
        "--labels",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="Class names, one per line (default: the 1000 ImageNet classes).",
    ),
    click.option(
        "-k", "--topk", default=5, show_default=True, type=int, help="Classes to report per image."
    ),
    click.option(
        "-b",
        "--batch-size",
        type=int,
        help="Images per batch [default: 8 on CPU; on CUDA, what free memory holds, 64-256].",
    ),
    click.option(
        "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."
    ),
    click.option(
        "--precision",
        default="auto",
        show_default=True,
        type=click.Choice(PRECISIONS),
        help="auto: bf16 on CUDA (fp16 where it lacks bf16) and on CPUs with native bf16 "
        "(AVX512-BF16, AMX), else fp32. Every record names the precision used.",
    ),
    click.option(
        "--exact",
        is_flag=True,
        help="The reference pipeline: fp32, full-size decoding, no EXIF rotation, plain RGB.",
    ),
    click.option(
        "--quantized",
        is_flag=True,
        help="INT8 on the CPU: torchvision's quantized weights for the 101 variants, or a "
        "checkpoint made by 'resnext quantize'.",
    ),
    click.option(
        "--runtime",
        default="auto",
        show_default=True,
        type=click.Choice(RUNTIMES),
        envvar=RUNTIME_ENV,
        help="auto: OpenVINO on the CPU when installed (pip install 'resnext-cli[openvino]'), "
        f"else torch; --exact always runs torch. Every record names the runtime used (also "
        f"{RUNTIME_ENV}=torch).",
    ),
    click.option(
        "--decode",
        default="auto",
        show_default=True,
        type=click.Choice(DECODERS),
        help="auto: baseline JPEGs on the GPU when running on a CUDA GPU with a hardware "
        "JPEG decoder, else Pillow on the CPU.",
    ),
    click.option(
        "--compile",
        is_flag=True,
        help="torch.compile the model: faster batches after a first one that compiles "
        "(its time is reported).",
    ),
    click.option(
        "--categories",
        is_flag=False,
        flag_value="default",
        metavar="[FILE]",
        help="Also give each image's categories (dog, car, food, ...: each the sum of its "
        "classes' probabilities); FILE maps class label or index to group, tab-separated.",
    ),
    click.option("--workers", type=int, help="Decoding threads [default: cores, up to 8]."),
    click.option(
        "--timeout", default=10.0, show_default=True, type=float, help="Seconds to wait for a URL."
    ),
    click.option(
        "--max-pixels",
        default=DEFAULT_MAX_PIXELS,
        show_default=True,
        type=int,
        help="Refuse images with more pixels (decompression bombs).",
    ),
    click.option(
        "--allow-truncated",
        is_flag=True,
        help="Classify what decodes of a truncated file instead of failing it.",
    ),
    click.option(
        "--offline",
        is_flag=True,
        envvar=OFFLINE_ENV,
        help=f"Never use the network for weights (also {OFFLINE_ENV}=1).",
    ),
    click.option(
        "--min-probability",
        type=click.FloatRange(0, 1),
        metavar="P",
        help="Mark results whose top-1 probability is below P as uncertain.",
    ),
    click.option(
        "--report",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="Also write a self-contained HTML report of every image to FILE.",
    ),
    click.option("-q", "--quiet", is_flag=True, help="No progress, warnings or summary on stderr."),
]


def given_options() -> list[str]:
    """The long names of the options typed on this command's line (not defaults or
    environment variables), for refusing those a kind of run would ignore."""
    ctx = click.get_current_context()
    return [
        param.opts[-1]
        for param in ctx.command.params
        if isinstance(param, click.Option)
        and param.name
        and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE
    ]


def run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Apply the options classify and sort share: model, inputs, threshold, report."""
    f = debug_option(f)  # listed last in --help
    for option in reversed(_RUN_OPTIONS):
        f = option(f)
    return pass_console(f)


def _name(option: Callable[..., Any]) -> str | None:
    """The parameter name a click.option decorator declares."""

    def probe() -> None: ...

    option(probe)
    params: list[click.Parameter] = getattr(probe, "__click_params__", [])
    return params[0].name if params else None


# The model and decoding options of classify that also choose how `learn` computes features.
_LEARN_NAMES = (
    "model",
    "weights",
    "checkpoint",
    "batch_size",
    "device",
    "precision",
    "exact",
    "decode",
    "workers",
    "max_pixels",
    "allow_truncated",
    "offline",
    "quiet",
)


def learn_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Apply classify's options that choose the base model and its preprocessing."""
    f = debug_option(f)
    for option in reversed(_RUN_OPTIONS):
        if _name(option) in _LEARN_NAMES:
            f = option(f)
    return pass_console(f)
