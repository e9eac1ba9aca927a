"""The one exception type users see: a short message that names the field, file or term at fault."""


class DistillError(Exception):
    """A problem with the user's input or environment, reported as one paragraph without a traceback."""
