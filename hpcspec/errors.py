"""Exceptions that carry a user-facing meaning, and the exit codes they map to.

Expected failures (bad input, bad configuration) are :class:`InputError`: the CLI agrees on them
collectively and every rank exits with :data:`EXIT_BAD_INPUT` after printing one line. Anything
else is a crash and aborts the whole MPI world.
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3


class InputError(ValueError):
    """Bad user input: a missing file, a wrong shape, an unknown name, a config typo.

    The message is a single line that names the problem and, where possible, the fix. A
    ``ValueError``, so that a library caller catches every refusal of a bad value as one family.
    """


class ArgumentError(InputError):
    """A bad argument to a library call (the CLI's one line, exit 2; a ``ValueError`` like every
    :class:`InputError`)."""


class ConfigError(InputError):
    """A configuration value or key that does not validate."""


def one_line(message: object) -> str:
    """``message`` on one line: a cause quoted from elsewhere (HDF5's text, an OS error, a user's
    exception) may carry newlines, and an error is one line a batch log can be grepped for."""
    return re.sub(r"\s*\n\s*", " ", str(message)).strip()
