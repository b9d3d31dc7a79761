"""The exceptions users see as one line: bad input (exit 2), the process's own limits (exit 1)."""


class EdgeCalibError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""

    exit_code = 2


class ResourceExhausted(Exception):
    """The process ran out of its own resources (open files, memory) while reading input: not
    a bad file, so never skipped as one (it is deliberately not an EdgeCalibError, which frame
    readers catch to skip a file). The CLI prints it in one line and exits 1; a run's capture
    thread ends the run with it as its error."""
