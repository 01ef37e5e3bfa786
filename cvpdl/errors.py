"""Errors the harness reports as one line, never a traceback: wrong user input, and a training run that diverged."""


class UserInputError(ValueError):
    """Bad input (missing file, malformed annotation, unknown name); the message says what and where."""


class NonFiniteLossError(ArithmeticError):
    """Training diverged: the loss became NaN or infinite. The runner fails that cell and keeps the others."""


def check_finite(value, where: str, what: str = "loss") -> None:
    """Raise ``NonFiniteLossError`` naming ``where`` (e.g. "epoch 3, step 12") when ``value`` has NaN or ±inf."""
    if not bool(value.isfinite().all()):
        raise NonFiniteLossError(f"{what} is {value.item() if value.numel() == 1 else 'not finite'} at {where}")
