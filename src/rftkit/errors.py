"""User-facing errors: the CLI prints their message (no traceback) and exits with `exit_code`."""


class UserError(Exception):
    """Bad input from the user: a file, a config key, a value. The message says what to change."""

    exit_code = 1


class ConfigError(UserError):
    """Unknown config key or wrong type: exit code 2, like a usage error."""

    exit_code = 2


class Interrupted(UserError):
    """Ctrl-C: the run saved what it had; exit 130 like any interrupted command."""

    exit_code = 130
