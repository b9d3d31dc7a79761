"""The one exception type users see: a one-line message, a non-zero exit."""


class EdgeCalibError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""

    exit_code = 2
