"""The training error, apart from the trainer so that the command line can name it without importing
accelerate."""


class TrainingError(RuntimeError):
    """A run stopped for a reason the user must act on (NaN loss, write failure)."""
