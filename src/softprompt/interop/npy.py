"""The reference implementation's prompt file: one `.npy` array of shape [p, e], float32.

The file carries no metadata, so importing one records the backbone only when a model is given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import SoftpromptError
from ..files import atomic_path
from ..prompt_io import load_prompt
from . import save_imported

if TYPE_CHECKING:
    from ..backbones import Backbone

FORMAT = "npy"


def export_npy(prompt_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write our prompt as the reference code's [p, e] float32 `.npy`, atomically, at exactly `path`.

    Raises SoftpromptError when `prompt_dir` does not hold a readable prompt or `path` is a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise SoftpromptError(f"{path}: is a directory; give the .npy file's path")
    weight, _ = load_prompt(prompt_dir)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
        np.save(f, weight.numpy().astype(np.float32, copy=False), allow_pickle=False)  # (p, e)
    return path


def read_npy(path: str | os.PathLike) -> torch.Tensor:
    """The float32 matrix in a `.npy` file.

    Raises SoftpromptError naming the file when it is missing, truncated, not a plain `.npy`
    array, not 2-D, not of a floating type, or holds NaN or infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise SoftpromptError(f"{path}: prompt file not found")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise SoftpromptError(f"{path}: truncated or corrupt .npy file ({err})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive loads as a mapping
        raise SoftpromptError(f"{path}: expected a single .npy array, found an archive")
    if array.ndim != 2:
        raise SoftpromptError(f"{path}: expected a [length, width] prompt array, found shape {array.shape}")
    if array.dtype.kind != "f":
        raise SoftpromptError(f"{path}: expected floating-point values, found dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise SoftpromptError(f"{path}: prompt holds NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))  # (p, e)


def import_npy(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: Backbone | None = None,
    task: str | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """Turn a reference-code `.npy` prompt into our prompt files in `out_dir`.

    With `model`, the width is checked and its name and embedding fingerprint are recorded.
    Raises SoftpromptError naming the file for anything `read_npy` refuses or a width mismatch.
    """
    path = Path(path)
    return save_imported(read_npy(path), out_dir, path, FORMAT, model, task, labels)
