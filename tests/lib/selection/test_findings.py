"""The finding detectors' pixel arithmetic (lib/selection/findings.py)."""

from __future__ import annotations

import numpy as np

from pathgen_dagster.lib.selection import findings


def test_the_channel_mean_is_numpys_mean_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    colour = (rng.random((64, 80, 3)) * 255).astype(np.float32)
    od = np.log10(255.0 / np.maximum(colour, 1.0))
    for image in (colour, od, od.astype(np.float64)):
        got = findings._channel_mean(image)
        assert got.dtype == image.dtype
        assert np.array_equal(got, image.mean(axis=-1))


def test_enclosed_lumina_count_only_large_solid_white_holes_inside_the_tile() -> None:
    """At 1 um a pixel: two 6 um discs inside count; a disc touching the border, a 3 px speck
    (under 20 um2) and a 2 px wide L (114 um2 in a 29 x 30 box, far from solid) do not."""
    yy, xx = np.mgrid[:60, :60]
    white = (yy - 12) ** 2 + (xx - 12) ** 2 <= 36  # inside, 113 px, round
    white |= (yy - 50) ** 2 + (xx - 50) ** 2 <= 36  # inside, round: a second lumen
    white |= (yy - 0) ** 2 + (xx - 40) ** 2 <= 36  # touches the top border
    white[45, 5:8] = True  # a speck
    white[25:27, 10:40] = True  # the L's arm ...
    white[25:54, 10:12] = True  # ... and its leg
    assert findings._enclosed_lumina(white, 1.0) == 2
    assert findings._enclosed_lumina(white, 0.4) == 0  # each disc is 113 px x 0.16 = 18 um2
    assert findings._enclosed_lumina(np.zeros((8, 8), dtype=bool), 1.0) == 0
