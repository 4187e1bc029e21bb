"""User-facing errors: the CLI prints them as one line and exits non-zero, no traceback."""


class GolfError(Exception):
    """A mistake in user input (recipe, data, CLI). Its message is one line naming the culprit."""

    exit_code = 1


class ConfigError(GolfError):
    """Bad recipe, config key, value or plugin name (exit code 2)."""

    exit_code = 2


class DataError(GolfError):
    """Missing, malformed or truncated data files."""


class ComplianceError(GolfError):
    """A legality check failed (e.g. an eval adapter returned an unnormalized distribution)."""


class PluginError(GolfError):
    """A plugin raised inside a hook: the message names the plugin, the hook and the exception,
    whose traceback stays attached as `__cause__` (shown by `golf --debug`)."""
