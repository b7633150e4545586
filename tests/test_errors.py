"""errors.py: the exit statuses of the README's table, and which error ends a run with which."""

from __future__ import annotations

import pytest

from resnext_cli.errors import (
    INPUT_ERROR_TYPES,
    CheckpointError,
    ConfigError,
    EngineError,
    ExitStatus,
    InputError,
    OutputError,
    ReaderGone,
    ResnextError,
    Terminated,
    WeightsError,
)


def test_exit_statuses_are_the_readme_table() -> None:
    # README, "Errors and exit codes": 0 all classified, 1 some failed, 2 usage and the
    # like, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
    assert {s.name: int(s) for s in ExitStatus} == {
        "OK": 0,
        "SOME_FAILED": 1,
        "USAGE": 2,
        "INTERRUPTED": 130,
        "TERMINATED": 143,
    }
    # 128 + the signal's number, as a shell reports a process a signal ended.
    assert ExitStatus.INTERRUPTED == 128 + 2 and ExitStatus.TERMINATED == 128 + 15


@pytest.mark.parametrize(
    ("error", "status"),
    [
        # README: a bad option value, unusable weights or checkpoint, an output that
        # cannot be written: exit 2.
        (ConfigError, 2),
        (WeightsError, 2),
        (CheckpointError, 2),
        (OutputError, 2),
        (ResnextError, 2),
        # Records the engine could not deliver: the rest were written, so "some failed".
        (EngineError, 1),
    ],
)
def test_each_error_ends_the_run_with_its_status(error: type[ResnextError], status: int) -> None:
    assert issubclass(error, ResnextError)
    assert error("one line").exit_status == status
    assert str(error("one line")) == "one line"


def test_input_error_types_are_the_readmes() -> None:
    # README's table of error types, in its order.
    assert INPUT_ERROR_TYPES == (
        "not_found",
        "not_an_image",
        "truncated",
        "too_large",
        "download_failed",
        "unreadable",
        "inference_failed",
    )


def test_an_input_error_carries_its_type_and_message() -> None:
    err = InputError("truncated", "image file is truncated")
    assert (err.error_type, err.message, str(err)) == (
        "truncated",
        "image file is truncated",
        "image file is truncated",
    )
    assert isinstance(err, ResnextError)


def test_an_input_error_of_an_unknown_type_is_a_bug_said_at_once() -> None:
    with pytest.raises(ValueError) as info:
        InputError("broken", "whatever")
    assert str(info.value) == "unknown input error type 'broken'"


def test_sigterm_and_a_gone_reader_are_not_errors_of_the_tool() -> None:
    # Terminated must pass through `except Exception` in worker code to reach the CLI.
    assert issubclass(Terminated, BaseException) and not issubclass(Terminated, Exception)
    # A reader gone (`| head -1`) ends the run quietly: it is no one-line error.
    assert issubclass(ReaderGone, Exception) and not issubclass(ReaderGone, ResnextError)
