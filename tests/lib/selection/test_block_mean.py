"""The strided block mean is numpy's reshape-and-mean, bit for bit, for every factor."""

import numpy as np
import pytest

from pathgen_dagster.lib.selection.nuclei import block_mean


@pytest.mark.parametrize("factor", range(1, 11))
def test_block_mean_is_numpys_mean_bit_for_bit(factor: int) -> None:
    rng = np.random.default_rng(factor)
    cases = [
        (rng.random((203, 190)) * rng.uniform(0.1, 5.0), np.float64),  # haematoxylin OD
        (rng.integers(0, 256, (203, 190, 3), dtype=np.uint8), np.float32),  # RGB tiles
        (rng.random((203, 190, 3), dtype=np.float32) * 255, np.float32),  # block means again
    ]
    for image, dtype in cases:
        h, w = image.shape[0] // factor, image.shape[1] // factor
        blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor, *image.shape[2:])
        expected = blocks.mean(axis=(1, 3), dtype=dtype)
        got = block_mean(image, factor, dtype)
        assert got.dtype == expected.dtype
        assert got.tobytes() == expected.tobytes(), (factor, image.dtype, dtype)
