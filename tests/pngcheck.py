"""Test helper: a PNG file that decodes to a real picture."""

from pathlib import Path

import numpy as np
from matplotlib.image import imread


def assert_real_png(path: Path, min_size: tuple[int, int] = (200, 200)) -> None:
    """``path`` decodes as a PNG at least ``min_size`` (height, width) with many distinct colours."""
    assert path.is_file(), f"missing {path}"
    image = imread(path)
    assert image.shape[0] >= min_size[0] and image.shape[1] >= min_size[1], (path, image.shape)
    colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
    assert len(colours) > 10, f"{path} is (nearly) a single colour"
