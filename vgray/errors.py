"""The errors vgray reports to users as one line, and the one line of any exception."""


class VgrayError(Exception):
    """A problem with the user's input or run directory, reported as one line without traceback."""


class BadVideo(VgrayError):
    """A video that cannot be used; it is skipped and recorded (or fails the run with --strict)."""


class StorageError(VgrayError):
    """The storage failed (throttling, 5xx, a reset, a timeout) after its retries: a fault of the
    machinery, never a verdict on a file. The unit of work that met it is run again; a run that
    cannot get past it fails with this one line, and records nothing as skipped."""


class SettingError(VgrayError, ValueError):
    """A setting out of its range (TrainConfig): a ValueError to a library user, one line to the
    command line's."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm, Kubernetes, `timeout` and job runners send): the run ends as Ctrl-C
    ends it, workers stopped, lock released, resumable."""


def first_line(error: BaseException) -> str:
    """An exception's message as one line: its first non-blank line, else its type's name."""
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__
