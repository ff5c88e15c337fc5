"""The errors vgray reports to users as one line."""


class VgrayError(Exception):
    """A problem with the user's input or run directory, reported as one line without traceback."""


class BadVideo(VgrayError):
    """A video that cannot be used; it is skipped and recorded (or fails the run with --strict)."""
