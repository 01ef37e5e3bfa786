"""Errors the harness reports as one line, never a traceback: wrong user input, and a training run that diverged."""


class UserInputError(ValueError):
    """Bad input (missing file, malformed annotation, unknown name); the message says what and where."""


class NonFiniteLossError(ArithmeticError):
    """Training diverged: the loss became NaN or infinite. The runner fails that cell and keeps the others."""


def check_finite(loss, where: str) -> None:
    """Raise ``NonFiniteLossError`` naming ``where`` (e.g. "epoch 3, step 12") when ``loss`` is NaN or ±inf."""
    if not bool(loss.isfinite().all()):
        raise NonFiniteLossError(f"loss is {loss.item() if loss.numel() == 1 else 'not finite'} at {where}")
