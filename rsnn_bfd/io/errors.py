"""The error of every reader of network files: a file that is not a loadable network."""


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint of this model (one-line message)."""
