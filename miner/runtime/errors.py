"""Named errors raised by the library; the CLI turns them into one-line messages.

Every error carries an ``exit_code`` so the CLI maps it in one place:

* 2 -- bad options or arguments (click's own usage errors use 2 as well);
* 3 -- bad input data (missing, empty, unreadable or non-text files);
* 4 -- a model that cannot be resolved or loaded;
* 1 -- anything else (a failed job, a database problem);
* 0 -- :class:`OutputClosed`: the reader of standard output went away (``miner export ... | head``),
  which ends the command quietly, as Unix tools do.
"""

from __future__ import annotations


class MinerError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class UsageError(MinerError):
    """An option or argument is invalid."""

    exit_code = 2


class InputFileError(MinerError):
    """An input file is missing, empty, unreadable or not text."""

    exit_code = 3


class ModelError(MinerError):
    """A model name or path cannot be resolved or loaded."""

    exit_code = 4


class JobNotFound(MinerError):
    """No job with the given id."""

    exit_code = 2


class JobStateError(UsageError):
    """The job is not in a state that allows this (export before done, retry while running)."""


class InputNotAllowed(UsageError):
    """An input path outside the folders a server may read (``MINER_INPUT_ROOTS``)."""


class JobFailed(MinerError):
    """A job ended in the failed or cancelled state."""

    exit_code = 1


class JobCancelled(MinerError):
    """The job was cancelled, or failed in another task; its remaining tasks stop."""

    exit_code = 1


class UnitTaken(JobCancelled):
    """Another live task holds this unit's lease (a message delivered twice, or one that came back
    after its unit was sent again): this task stops quietly and the other one runs the unit."""


class OutputClosed(MinerError):
    """Standard output is a pipe whose reader has gone (``| head``): the command ends quietly."""

    exit_code = 0
