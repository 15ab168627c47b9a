"""Exceptions that carry a user-facing meaning, and the exit codes they map to.

Expected failures (bad input, bad configuration) are :class:`InputError`: the CLI agrees on them
collectively and every rank exits with :data:`EXIT_BAD_INPUT` after printing one line. Anything
else is a crash and aborts the whole MPI world.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3


class InputError(Exception):
    """Bad user input: a missing file, a wrong shape, an unknown name, a config typo.

    The message is a single line that names the problem and, where possible, the fix.
    """


class ConfigError(InputError):
    """A configuration value or key that does not validate."""
