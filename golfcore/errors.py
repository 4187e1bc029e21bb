"""User-facing errors: the CLI prints them as one line and exits non-zero, no traceback."""

from __future__ import annotations


class GolfError(Exception):
    """A mistake in user input (recipe, data, CLI). Its message is one line naming the culprit."""

    exit_code = 1


class ConfigError(GolfError):
    """Bad recipe, config key, value or plugin name (exit code 2)."""

    exit_code = 2


class DataError(GolfError):
    """Missing, malformed or truncated data files."""


class ComplianceError(GolfError):
    """A legality check failed, so the score is not a legal one (exit code 3): an eval adapter
    returned an unnormalized distribution, a probe saw the future leak into a score, the
    artifact is over budget. `condition` names the check (e.g. "C1"), `culprit` the plugin or
    adapter responsible when it could be isolated (docs/compliance.md)."""

    exit_code = 3

    def __init__(self, message: str, condition: str | None = None, culprit: str | None = None):
        super().__init__(message)
        self.condition = condition
        self.culprit = culprit


class PluginError(GolfError):
    """A plugin raised inside a hook: the message names the plugin, the hook and the exception,
    whose traceback stays attached as `__cause__` (shown by `golf --debug`)."""


class CheckpointError(GolfError):
    """A checkpoint that is damaged, or was written by another recipe or other code."""


class DivergedError(GolfError):
    """Training stopped because the loss or gradient norm went non-finite (or spiked); exit code 4.

    `step` is the first step seen diverging."""

    exit_code = 4

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class TrainingInterrupted(GolfError):
    """SIGTERM or SIGINT stopped training at a step boundary (after writing a checkpoint when
    they are on). Exit code 75 (EX_TEMPFAIL): "resume later" with `golf run --resume RUN_DIR`."""

    exit_code = 75

