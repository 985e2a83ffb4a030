"""A slide without microns per pixel is never given one (issue 10, item 2)."""

from __future__ import annotations

import math
import re

import numpy as np
import openslide
import pytest

from pathgen_dagster.lib.captions.verbalize import (
    contradictions,
    describe,
    facts_sentence,
    summarize,
)
from pathgen_dagster.lib.ingest.sources import CMU_SMALL_REGION, fetch
from pathgen_dagster.lib.selection.facts import (
    SCALE_DEPENDENT_BANDS,
    SCALE_DEPENDENT_MEASURES,
    MorphologyFacts,
    resolve_mpp,
)
from pathgen_dagster.lib.selection.morphology import MorphologyEncoder

# Claims whose truth depends on the physical scale of the field.
SCALE_CLAIMS = re.compile(
    r"cellular|(?:small|medium|large|enlarged)[\w\s,-]{0,20}nucle|pleomorph|lymph|infiltrat"
    r"|\b(?:um|µm|microns?|mm2?)\b",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    with openslide.OpenSlide(fetch(CMU_SMALL_REGION)) as slide:
        region = np.asarray(slide.read_region((700, 1500), 0, (1344, 672)).convert("RGB"))
    return np.stack([region[:, :672], region[:, 672:]])


def test_resolve_mpp_takes_the_slide_then_the_config_never_a_default() -> None:
    assert resolve_mpp("s", 0.499, None) == (0.499, "slide")
    assert resolve_mpp("s", 0.499, 0.5) == (0.499, "slide")  # within 2 %: the slide's own
    assert resolve_mpp("s", None, 0.25) == (0.25, "config")
    assert resolve_mpp("s", None, None) == (None, "unknown")
    with pytest.raises(ValueError, match="slide 's', stage patch_embeddings: .*contradicts"):
        resolve_mpp("s", 0.25, 0.5)
    with pytest.raises(ValueError, match="not a positive number"):
        resolve_mpp("s", None, 0.0)


def test_unknown_mpp_leaves_physical_measures_unknown(tiles: np.ndarray) -> None:
    encoder = MorphologyEncoder()
    embeddings, facts = encoder.embed(tiles, None)
    assert embeddings.shape == (2, encoder.dim) and np.isfinite(embeddings).all()
    for fact in facts:
        assert fact.mpp_source == "unknown" and not fact.scale_known
        assert all(math.isnan(getattr(fact, name)) for name in SCALE_DEPENDENT_MEASURES)
        assert all(getattr(fact, name) == "unknown" for name in SCALE_DEPENDENT_BANDS)
        assert not fact.nuclear_detail_supported
        # Pixel ratios need no scale and stay measured.
        assert 0 < fact.tissue_fraction <= 1 and fact.stroma != "unknown"
        # The facts survive their JSON round trip (NaN included).
        assert MorphologyFacts.from_dict(fact.to_dict()).mpp_source == "unknown"
    _, known = encoder.embed(tiles, 0.499, mpp_source="config")
    assert known[0].mpp_source == "config" and known[0].cellularity != "unknown"


def test_captions_of_an_unscaled_slide_say_nothing_scale_dependent(tiles: np.ndarray) -> None:
    _, facts = MorphologyEncoder().embed(tiles, None)
    for index, fact in enumerate(facts):
        seed = f"patch-{index}"
        description = describe(fact, tissue_site=None, seed=seed)
        caption = summarize(description, fact, seed=seed)
        for text in (description, caption, facts_sentence(fact)):
            assert not SCALE_CLAIMS.search(text), text
            assert contradictions(text, fact) == []
        # A caption that claims cellularity anyway is flagged, and says why.
        flagged = contradictions("Densely cellular tissue with large nuclei.", fact)
        assert flagged and all("microns per pixel are unknown" in why for _, why in flagged)
