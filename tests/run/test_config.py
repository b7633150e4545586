"""run/config.py: each option's value checked on its own, before anything loads."""

from __future__ import annotations

import math

import pytest

from resnext_cli.errors import ConfigError
from resnext_cli.run.config import Config


def test_defaults_are_the_documented_ones() -> None:
    config = Config()
    # README: "--max-pixels N (default 178,956,970)", Pillow's decompression-bomb limit
    # (twice its warning threshold of 89,478,485 pixels); "-k" 5; "--timeout" 10 s; the
    # 100 MiB download cap of the error table.
    assert config.max_pixels == 178_956_970 == 2 * 89_478_485
    assert (config.topk, config.timeout, config.max_download_bytes) == (5, 10.0, 100 * 2**20)
    assert (config.model, config.weights) == ("resnext50_32x4d", "DEFAULT")
    assert (config.device, config.precision, config.decode) == ("auto", "auto", "auto")


@pytest.mark.parametrize(
    ("model", "canonical"),
    [("50", "resnext50_32x4d"), ("101", "resnext101_32x8d"), ("101-64", "resnext101_64x4d")],
)
def test_short_model_names(model: str, canonical: str) -> None:
    assert Config(model=model).model == canonical


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"topk": 0}, "--topk must be at least 1, not 0"),
        ({"batch_size": 0}, "--batch-size must be at least 1, not 0"),
        ({"workers": -1}, "--workers must be 0 or more, not -1"),
        ({"timeout": 0.0}, "--timeout must be a positive number of seconds, not 0"),
        ({"timeout": -2.5}, "--timeout must be a positive number of seconds, not -2.5"),
        ({"timeout": math.nan}, "--timeout must be a positive number of seconds, not nan"),
        ({"timeout": math.inf}, "--timeout must be a positive number of seconds, not inf"),
        ({"max_pixels": 0}, "--max-pixels must be at least 1, not 0"),
        ({"precision": "fp8"}, "unknown precision 'fp8' (choose from: auto, fp32, bf16, fp16)"),
        ({"decode": "npu"}, "unknown decoder 'npu' (choose from: auto, cpu, gpu)"),
        ({"runtime": "onnx"}, "unknown runtime 'onnx' (choose from: auto, torch, openvino)"),
        (
            {"device": "tpu"},
            "unknown device 'tpu' (choose from: auto, cpu, cuda, cuda:N, mps)",
        ),
    ],
)
def test_each_bad_value_is_one_line(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**options)  # type: ignore[arg-type]
    assert str(info.value) == message


@pytest.mark.parametrize(
    "options",
    [
        {"exact": True, "quantized": True},
        {"exact": True, "precision": "bf16"},
        {"exact": True, "runtime": "openvino"},
        {"exact": True, "decode": "gpu"},
        {"model": "101", "quantized": True, "precision": "fp16"},
        {"model": "101", "quantized": True, "embeddings": True},
        {"model": "101", "quantized": True, "compile": True},
    ],
)
def test_a_config_checks_single_values_not_pairs(options: dict[str, object]) -> None:
    # Which options contradict each other is the plan's to say (test_plan.py).
    config = Config(**options)  # type: ignore[arg-type]
    assert {name: getattr(config, name) for name in options if name != "model"} == {
        name: value for name, value in options.items() if name != "model"
    }


def test_the_smallest_values_each_option_takes() -> None:
    config = Config(topk=1, batch_size=1, workers=0, timeout=0.001, max_pixels=1)
    assert (config.topk, config.batch_size, config.workers) == (1, 1, 0)
    assert (config.timeout, config.max_pixels) == (0.001, 1)


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "mps", "auto"])
def test_devices_by_their_spelling(device: str) -> None:
    assert Config(device=device).device == device


def test_with_checks_again() -> None:
    assert Config().with_(topk=3).topk == 3
    with pytest.raises(ConfigError):
        Config().with_(topk=0)
