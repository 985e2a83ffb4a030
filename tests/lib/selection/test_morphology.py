"""The morphology encoder on real H&E: the CMU Aperio slide and the tiatoolbox patch."""

from __future__ import annotations

import dataclasses

import numpy as np
import openslide
import pytest
import torch
from PIL import Image
from scipy import ndimage as ndi
from skimage.color import rgb2hed

from pathgen_dagster.lib.ingest.sources import CMU_SMALL_REGION, TIATOOLBOX_TARGET, fetch
from pathgen_dagster.lib.selection import morphology
from pathgen_dagster.lib.selection.facts import (
    BANDS,
    DESCRIPTOR_COMPONENTS,
    DESCRIPTOR_DIM,
    REFERENCE_MEAN,
    REFERENCE_STD,
    MorphologyFacts,
)
from pathgen_dagster.lib.selection.morphology import (
    MorphologyEncoder,
    embed_loop,
    measure,
    measure_loop,
    unmix_stains,
)

# Level-0 (x, y) of 672 px tiles of the CMU skin slide (0.499 um/px), chosen by eye.
CMU_TILES = {
    "epidermis": (1008, 1008),  # sheet of keratinocytes
    "dermis": (1300, 2200),  # collagen with scattered fibroblasts
    "background": (0, 336),  # empty glass
}
# tiatoolbox does not document the patch's resolution; its lymphocytes (~7 um) span ~16 px.
TIATOOLBOX_MPP = 0.5


@pytest.fixture(scope="module")
def cmu() -> tuple[dict[str, np.ndarray], float]:
    slide = openslide.OpenSlide(fetch(CMU_SMALL_REGION))
    mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
    tiles = {
        name: np.asarray(slide.read_region(xy, 0, (672, 672)).convert("RGB"))
        for name, xy in CMU_TILES.items()
    }
    return tiles, mpp


@pytest.fixture(scope="module")
def carcinoma() -> np.ndarray:
    return np.asarray(Image.open(fetch(TIATOOLBOX_TARGET)).convert("RGB"))[:672, :672]


@pytest.fixture(scope="module")
def pink() -> np.ndarray:
    """An eosin-only tile: what stroma without a single nucleus would look like."""
    return np.broadcast_to(np.array([236, 150, 190], dtype=np.uint8), (672, 672, 3)).copy()


@pytest.fixture(scope="module")
def cmu_facts(cmu) -> dict[str, MorphologyFacts]:
    tiles, mpp = cmu
    facts, _ = measure(np.stack(list(tiles.values())), mpp)
    return dict(zip(tiles, facts, strict=True))


def test_unmixing_equals_skimage_rgb2hed(carcinoma):
    rgb = torch.from_numpy(carcinoma.astype(np.float32)).permute(2, 0, 1)[None]
    ours = unmix_stains(rgb)[0].permute(1, 2, 0).numpy()
    reference = np.maximum(rgb2hed(np.maximum(carcinoma, 1) / 255.0) * 6.0, 0)[..., :2]
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_blur_equals_scipy_gaussian_filter_with_mirrored_borders():
    image = torch.rand(2, 40, 57, dtype=torch.float64)
    for sigma in (1.0, 4.0, 16.0):  # 16 px: the kernel overhangs the 40 px image twice
        ours = morphology._blur(image, sigma)
        for i in range(2):
            expected = ndi.gaussian_filter(image[i].numpy(), sigma, mode="mirror")
            np.testing.assert_allclose(ours[i].numpy(), expected, atol=1e-12)


def test_label_propagation_finds_the_same_components_as_scipy(carcinoma):
    """The GPU labelling path, checked on CPU against scipy's 8-connected labels."""
    rng = np.random.default_rng(0)
    masks = [rgb2hed(carcinoma)[::2, ::2, 0] > 0.05, rng.random((336, 336)) > 0.55]
    mask = torch.from_numpy(np.stack(masks))
    roots = morphology._label_propagate(mask).numpy()
    for i, tile_mask in enumerate(masks):
        expected, count = ndi.label(tile_mask, structure=np.ones((3, 3)))
        pairs = set(zip(roots[i][tile_mask], expected[tile_mask], strict=True))
        # A bijection between the two labellings: every component matches exactly one.
        assert len(pairs) == count == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_the_accelerator_labelling_path_gives_the_same_measurements(cmu, carcinoma, monkeypatch):
    """What a GPU runs (batched propagation instead of per-tile scipy labels), run on CPU."""
    tiles, mpp = cmu
    batch = np.stack([*tiles.values(), carcinoma])
    _, scipy_raw = measure(batch, mpp)
    monkeypatch.setattr(morphology, "_components", morphology._components_propagate)
    _, propagated_raw = measure(batch, mpp)
    np.testing.assert_array_equal(propagated_raw, scipy_raw)


def test_batch_measurements_agree_with_the_one_tile_loop(cmu, carcinoma, pink):
    tiles, mpp = cmu
    batch = np.stack([*tiles.values(), carcinoma, pink])
    facts, raw = measure(batch, mpp, batch_size=3)  # two torch batches
    loop_facts, loop_raw = measure_loop(batch, mpp)
    for ours, reference in zip(facts, loop_facts, strict=True):
        assert ours.nuclei_count == reference.nuclei_count
        assert {b: getattr(ours, b) for b in BANDS} == {b: getattr(reference, b) for b in BANDS}
    # Percentiles come from 1/256 OD bins in the batch; everything else is exact to float32.
    z_gap = np.abs(raw - loop_raw) / REFERENCE_STD
    assert z_gap.max() < 0.2
    vectors, _ = MorphologyEncoder(batch_size=4).embed(batch, mpp)
    loop_vectors, _ = embed_loop(batch, mpp)
    assert np.min(np.sum(vectors * loop_vectors, axis=1)) > 0.999


def test_facts_are_plausible_on_real_tissue(cmu_facts, carcinoma, pink):
    epidermis, dermis, background = (cmu_facts[n] for n in ("epidermis", "dermis", "background"))
    assert epidermis.tissue_fraction > 0.6
    assert background.tissue_fraction < 0.02
    assert background.lumen_or_fat == "prominent"
    # Looked at (issue 10): the "epidermis" tile is epidermis on its left third and keratin
    # flakes with white space on the rest, so moderate overall (the old area measure said
    # high); the "dermis" tile is collagen on the left and epidermis with rete ridges on
    # the right, so moderate stroma, not abundant.
    assert epidermis.cellularity == "moderate" and epidermis.stroma == "scant"
    assert dermis.stroma == "moderate"
    assert epidermis.nuclei_count_log > 200 and background.nuclei_count_log == 0
    assert epidermis.nuclei_count > 200 and background.nuclei_count < 5
    assert 1000 < epidermis.nuclei_density_per_mm2 < 20000
    assert 20 < epidermis.nuclear_area_mean_um2 < 120

    (tumour, eosin_only), _ = measure(np.stack([carcinoma, pink]), TIATOOLBOX_MPP)
    assert tumour.tissue_fraction > 0.85
    assert tumour.nuclear_size == "large"  # carcinoma nuclei are larger than keratinocytes'
    assert tumour.nuclear_area_mean_um2 > epidermis.nuclear_area_mean_um2
    assert tumour.nuclei_count > 100
    assert eosin_only.nuclei_count == 0 and eosin_only.tissue_fraction == 1.0
    assert eosin_only.eosin_fraction == 1.0 and eosin_only.stroma == "abundant"
    assert eosin_only.lumen_or_fat == "absent"


def test_embeddings_are_unit_vectors_independent_of_the_batch(cmu, carcinoma):
    tiles, mpp = cmu
    batch = np.stack([*tiles.values(), carcinoma])
    encoder = MorphologyEncoder()
    vectors, facts = encoder.embed(batch, mpp)
    assert vectors.shape == (4, encoder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    alone, _ = encoder.embed(batch[1:2], mpp)
    np.testing.assert_allclose(alone[0], vectors[1], atol=1e-4)  # float32 summation order
    assert len(facts) == 4


def test_similar_tissue_is_closer_than_different_tissue(cmu, carcinoma):
    tiles, mpp = cmu
    slide = openslide.OpenSlide(fetch(CMU_SMALL_REGION))
    x, y = CMU_TILES["epidermis"]
    shifted = np.asarray(slide.read_region((x + 96, y + 96), 0, (672, 672)).convert("RGB"))
    vectors, _ = MorphologyEncoder().embed(
        np.stack([tiles["epidermis"], shifted, tiles["dermis"], carcinoma]), mpp
    )
    same = vectors[0] @ vectors[1]
    assert same > vectors[0] @ vectors[2]
    assert same > vectors[0] @ vectors[3]


def test_any_tile_size_and_magnification_is_measured():
    rng = np.random.default_rng(1)
    tiles = rng.integers(0, 256, (2, 224, 300, 3), dtype=np.uint8)
    for mpp in (0.25, 2.0):  # 40x is downsampled 4x; 2 um/px is used as it is
        vectors, facts = MorphologyEncoder().embed(tiles, mpp)
        assert vectors.shape == (2, DESCRIPTOR_DIM)
        assert np.isfinite(vectors).all()
        assert facts[0].field_width_um == pytest.approx(300 * mpp)
    empty, none = MorphologyEncoder().embed(np.zeros((0, 672, 672, 3), np.uint8), 0.5)
    assert empty.shape == (0, DESCRIPTOR_DIM) and none == []


def test_bad_input_is_refused_with_a_fix():
    with pytest.raises(ValueError, match="alpha"):
        measure(np.zeros((1, 8, 8, 4), np.uint8), 0.5)
    with pytest.raises(ValueError, match="mpp"):
        measure(np.zeros((1, 8, 8, 3), np.uint8), 0.0)


def test_facts_round_trip_through_a_plain_dict(cmu_facts):
    facts = cmu_facts["epidermis"]
    values = facts.to_dict()
    assert all(isinstance(v, float | int | str) for v in values.values())
    assert MorphologyFacts.from_dict({**values, "unknown": 1}) == facts
    assert isinstance(MorphologyFacts.from_dict(values).nuclei_count, int)


def test_band_table_reads_measured_fields_with_ordered_edges():
    measured = {f.name for f in dataclasses.fields(MorphologyFacts)}
    for name, band in BANDS.items():
        assert name in measured and band.measure in measured
        assert list(band.edges) == sorted(band.edges)
        assert len(band.labels) == len(band.edges) + 1
    cellularity = BANDS["cellularity"]
    assert cellularity.label(0.0) == "low"
    assert cellularity.label(cellularity.edges[0]) == "moderate"  # an edge belongs above
    assert cellularity.label(1e5) == "high"  # nuclei per mm2 of tissue


def test_descriptor_components_tile_the_vector():
    position = 0
    for component in DESCRIPTOR_COMPONENTS:
        assert component.index.start == position and component.meaning
        position = component.index.stop
    assert position == DESCRIPTOR_DIM == MorphologyEncoder.dim
    assert len(REFERENCE_MEAN) == len(REFERENCE_STD) == DESCRIPTOR_DIM
