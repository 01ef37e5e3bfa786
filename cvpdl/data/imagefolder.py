"""Real classification data for ``kd``: an ImageFolder (``ROOT/<class>/<image>``), resized to a square."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cvpdl.errors import UserInputError


def load_imagefolder(root: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 images (N, size, size, 3), integer labels and the class names (sorted folder names)."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import Resize

    if not Path(root).is_dir():
        raise UserInputError(f"ImageFolder split not found: {root} (expected ROOT/train, ROOT/val, ROOT/test, each "
                             "with one folder per class)")
    try:
        dataset = ImageFolder(str(root), transform=Resize((size, size)))
    except (FileNotFoundError, RuntimeError) as err:
        raise UserInputError(f"{root}: {err}") from None
    images = np.stack([np.asarray(dataset[i][0].convert("RGB")) for i in range(len(dataset))])
    return images, np.asarray(dataset.targets, dtype=np.int64), list(dataset.classes)
