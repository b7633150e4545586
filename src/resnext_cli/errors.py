"""One exception hierarchy and the process exit statuses."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """What the process exits with; one run report decides which."""

    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    INTERRUPTED = 130
    TERMINATED = 143


class ResnextError(Exception):
    """Base of every error the tool reports as one line."""

    exit_status: ExitStatus = ExitStatus.USAGE


class ConfigError(ResnextError):
    """A bad option value or combination, found before any image is read."""


class WeightsError(ResnextError):
    """Weights cannot be had: offline, unreachable, hash mismatch, corrupt file."""


class CheckpointError(ResnextError):
    """A checkpoint that is not a usable state dict for the chosen model."""


class EngineError(ResnextError):
    """The engine could not deliver every record (exit 1: the rest were written)."""

    exit_status = ExitStatus.SOME_FAILED


class OutputError(ResnextError):
    """The output file cannot be written as asked."""


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives."""


class ReaderGone(Exception):
    """The reader of stdout went away (`| head -1`): stop quietly, as Unix tools do."""


# The error types an input can end with, as they appear in records.
INPUT_ERROR_TYPES = (
    "not_found",
    "not_an_image",
    "truncated",
    "too_large",
    "download_failed",
    "unreadable",
    "inference_failed",
)


class InputError(ResnextError):
    """One input could not be classified; the run goes on."""

    def __init__(self, error_type: str, message: str) -> None:
        if error_type not in INPUT_ERROR_TYPES:
            raise ValueError(f"unknown input error type {error_type!r}")
        super().__init__(message)
        self.error_type = error_type
        self.message = message
