"""Stage A selection on constructed embeddings: PathGen's formulas, cap, dedup, seeds, edges."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from pathgen_dagster.lib.selection.selection import (
    DEFAULT_SELECTION,
    SelectionConfig,
    attribute_scores,
    cluster_count,
    deduplicate,
    draw_per_cluster,
    kmeans,
    per_cluster_quota,
    report_scores,
    select,
    similarity,
    with_encoder_threshold,
)

DIM = 64
# These tests use PathGen's CLIP threshold on constructed embeddings.
CFG = replace(DEFAULT_SELECTION, dedup_threshold=0.88)


def random_unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Random directions: in 64-d two of them are never near-duplicates by chance."""
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def at_cosine(cosine: float, dim: int = DIM) -> np.ndarray:
    """Two unit rows whose cosine is exactly ``cosine`` (to float64 rounding)."""
    pair = np.zeros((2, dim))
    pair[0, 0] = 1.0
    pair[1, 0], pair[1, 1] = cosine, math.sqrt(1.0 - cosine**2)
    return pair


@pytest.fixture(scope="module")
def prompts() -> np.ndarray:
    return random_unit(20, seed=99)


def test_defaults_are_pathgen() -> None:
    # The dedup threshold is the encoder's (None until with_encoder_threshold fills it).
    assert SelectionConfig(64, 64, 128, 1.6, 256, None, 0, 50) == DEFAULT_SELECTION
    assert with_encoder_threshold(DEFAULT_SELECTION, 0.935).dedup_threshold == 0.935
    assert with_encoder_threshold(CFG, 0.935).dedup_threshold == 0.88  # set by the user: kept


def test_select_refuses_an_undeclared_threshold() -> None:
    with pytest.raises(ValueError, match="belong to the image encoder"):
        select(random_unit(3, seed=6), prompt_emb=random_unit(2, seed=7))


@pytest.mark.parametrize(
    ("n_tiles", "k"),
    [(0, 0), (1, 2), (128, 2), (129, 2), (256, 2), (385, 3), (1000, 4), (10_000, 12)],
)
def test_cluster_count_follows_pathgen_formula(n_tiles: int, k: int) -> None:
    assert cluster_count(n_tiles) == k
    if n_tiles:
        assert k == math.ceil(math.sqrt(1.6 * math.ceil(n_tiles / 128)))


@pytest.mark.parametrize(("k", "quota"), [(0, 0), (1, 256), (2, 128), (4, 64), (12, 21), (300, 1)])
def test_per_cluster_quota(k: int, quota: int) -> None:
    assert per_cluster_quota(k) == quota


def test_scores_are_100_times_cosine() -> None:
    image = np.array([[2.0, 0.0], [0.0, 3.0]])
    texts = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(similarity(image, texts), [[100, 70.710678], [0, 70.710678]], 1e-5)
    best, top = attribute_scores(image, texts)
    np.testing.assert_allclose(best, [100, 70.710678], rtol=1e-5)
    assert top.tolist() == [0, 1]
    np.testing.assert_allclose(report_scores(image, texts), [170.710678, 70.710678], rtol=1e-5)
    assert report_scores(image, None) is None
    assert report_scores(image, np.zeros((0, 2))) is None


def test_mismatched_dimensions_and_missing_prompts_are_explained() -> None:
    with pytest.raises(ValueError, match="same model"):
        similarity(np.ones((3, 64)), np.ones((2, 384)))
    with pytest.raises(ValueError, match="no attribute prompts"):
        attribute_scores(np.ones((3, 64)), np.zeros((0, 64)))


def test_kmeans_finds_separated_groups_and_is_seeded() -> None:
    centres = np.eye(DIM)[:3] * 10
    points = np.repeat(centres, 50, axis=0) + random_unit(150, seed=1)
    labels, centroids = kmeans(points, 3, seed=0, iterations=50)
    assert centroids.shape == (3, DIM)
    groups = labels.reshape(3, 50)
    assert all(len(set(group.tolist())) == 1 for group in groups)
    assert len({group[0] for group in groups}) == 3
    again, _ = kmeans(torch.as_tensor(points), 3, seed=0, iterations=50)
    np.testing.assert_array_equal(labels, again)


def test_kmeans_edge_cases() -> None:
    labels, centroids = kmeans(random_unit(2, seed=0), 5, seed=0, iterations=50)
    assert centroids.shape == (2, DIM) and sorted(labels.tolist()) == [0, 1]
    labels, _ = kmeans(random_unit(10, seed=0), 1, seed=0, iterations=50)
    assert labels.tolist() == [0] * 10
    duplicates = np.tile(random_unit(1, seed=0), (6, 1))
    labels, centroids = kmeans(duplicates, 3, seed=0, iterations=50)
    assert centroids.shape == (3, DIM) and len(set(labels.tolist())) == 1
    labels, centroids = kmeans(np.zeros((0, DIM)), 0, seed=0, iterations=50)
    assert labels.shape == (0,) and centroids.shape == (0, DIM)


def test_draw_per_cluster_takes_quota_or_whole_cluster() -> None:
    labels = np.array([0] * 10 + [1] * 2 + [2] * 5)
    drawn = draw_per_cluster(labels, quota=4, seed=0)
    assert np.bincount(labels[drawn]).tolist() == [4, 2, 4]
    assert drawn.tolist() == sorted(drawn.tolist())
    np.testing.assert_array_equal(drawn, draw_per_cluster(labels, quota=4, seed=0))
    assert draw_per_cluster(np.zeros(0, dtype=np.int64), quota=4, seed=0).size == 0


@pytest.mark.parametrize(("cosine", "kept"), [(0.879, [0, 1]), (0.88, [0]), (0.95, [0])])
def test_dedup_threshold(cosine: float, kept: list[int]) -> None:
    assert deduplicate(at_cosine(cosine), np.array([0, 1]), 0.88).tolist() == kept


def test_dedup_keeps_the_higher_priority_tile_and_survives_float32() -> None:
    pair = at_cosine(0.88).astype(np.float32)
    assert deduplicate(pair, np.array([1, 0]), 0.88).tolist() == [1]
    assert deduplicate(pair, np.array([], dtype=np.int64), 0.88).size == 0


def test_selection_ignores_the_last_bits_of_the_retrieval_text(prompts) -> None:
    """Tiles that share a facts sentence tie; MiniLM gives the same sentence embeddings that
    differ by ~1e-7 with the batch it was padded in. Which tied tiles are kept must not
    follow that noise: on the score grid they tie, and the tie breaks by tile index."""
    sentences = random_unit(5, seed=11)
    retrieval = np.repeat(sentences, 60, axis=0)  # 300 tiles, 60 per sentence
    noise = np.random.default_rng(12).normal(scale=2e-7, size=retrieval.shape)
    noisy = (retrieval + noise).astype(np.float32)
    assert (noisy @ prompts.T != retrieval @ prompts.T).mean() > 0.9  # the raw cosines moved
    cfg = replace(CFG, max_per_slide=64)  # the cap keeps the 64 attribute picks alone
    image = random_unit(300, seed=13)
    clean = select(image, prompt_emb=prompts, retrieval_emb=retrieval, cfg=cfg)
    moved = select(image, prompt_emb=prompts, retrieval_emb=noisy, cfg=cfg)
    assert len(clean) == 64
    assert clean.tile_index.tolist() == moved.tile_index.tolist()
    assert clean.top_prompt.tolist() == moved.top_prompt.tolist()
    assert clean.attribute_score.tolist() == moved.attribute_score.tolist()


def test_select_caps_at_256_keeping_attribute_picks_and_every_cluster(prompts) -> None:
    image = random_unit(1000, seed=2)
    result = select(image, prompt_emb=prompts, finding_emb=random_unit(3, seed=3), cfg=CFG)
    assert (result.k, result.quota) == (4, 64)
    assert result.n_candidates > 256 and result.n_after_cap == 256 == len(result)
    best_attribute = np.argsort(-attribute_scores(image, prompts)[0], kind="stable")[:64]
    assert set(best_attribute.tolist()) <= set(result.tile_index.tolist())
    assert set(result.cluster_id.tolist()) == {0, 1, 2, 3}
    assert result.tile_index.tolist() == sorted(set(result.tile_index.tolist()))
    assert {r for reasons in result.reasons for r in reasons} == {"attribute", "cluster", "report"}
    assert all(reasons == sorted(reasons) and reasons for reasons in result.reasons)


def test_select_small_cap_prefers_attribute_then_report_then_clusters(prompts) -> None:
    image = random_unit(1000, seed=2)
    findings = random_unit(2, seed=3)
    cfg = replace(CFG, top_k_attribute=4, top_k_report=4, max_per_slide=10)
    result = select(image, prompt_emb=prompts, finding_emb=findings, cfg=cfg)
    chosen = set(result.tile_index.tolist())
    assert set(np.argsort(-attribute_scores(image, prompts)[0])[:4].tolist()) <= chosen
    assert set(np.argsort(-report_scores(image, findings))[:4].tolist()) <= chosen
    # Quota is 10 // 4 = 2; places left after the ranked picks go to cluster draws.
    assert len(result) == 10 and result.quota == 2


def test_select_drops_near_duplicates_after_ranking(prompts) -> None:
    image = random_unit(50, seed=4)
    image[7] = prompts[0]
    image[8] = prompts[0] * 0.999 + image[9] * 0.001  # cosine with tile 7 above 0.88
    result = select(image, prompt_emb=prompts, cfg=CFG)
    chosen = result.tile_index.tolist()
    assert (7 in chosen) != (8 in chosen)
    assert result.n_after_cap == 50 and len(result) == 49


def test_select_is_deterministic_per_seed(prompts) -> None:
    image = random_unit(1000, seed=5)
    first = select(image, prompt_emb=prompts, cfg=CFG)
    second = select(torch.as_tensor(image), prompt_emb=torch.as_tensor(prompts), cfg=CFG)
    np.testing.assert_array_equal(first.tile_index, second.tile_index)
    np.testing.assert_array_equal(first.cluster_id, second.cluster_id)
    assert first.reasons == second.reasons
    other = select(image, prompt_emb=prompts, cfg=replace(CFG, seed=1))
    assert first.tile_index.tolist() != other.tile_index.tolist()


def test_select_with_fewer_tiles_than_quotas(prompts) -> None:
    result = select(random_unit(3, seed=6), prompt_emb=prompts, cfg=CFG)
    assert result.tile_index.tolist() == [0, 1, 2]
    assert (result.k, result.quota) == (2, 128)
    assert all(reasons == ["attribute", "cluster"] for reasons in result.reasons)
    assert result.top_prompt.shape == (3,) and result.top_prompt.max() < len(prompts)


def test_select_with_zero_tiles(prompts) -> None:
    result = select(np.zeros((0, DIM), dtype=np.float32), prompt_emb=prompts, cfg=CFG)
    assert len(result) == 0 and result.reasons == []
    assert (result.k, result.quota, result.n_candidates) == (0, 0, 0)
    assert result.report_score is None


def test_report_ranking_absent_vs_present(prompts) -> None:
    image = random_unit(600, seed=7)
    finding = random_unit(1, seed=8)
    # Tiles 10..14 sit next to the finding, so the report ranking must propose them.
    image[10:15] = finding + 0.6 * random_unit(5, seed=9)
    without = select(image, prompt_emb=prompts, cfg=CFG)
    assert without.report_score is None
    assert not any("report" in reasons for reasons in without.reasons)
    with_report = select(image, prompt_emb=prompts, finding_emb=finding, cfg=CFG)
    assert with_report.report_score is not None
    assert with_report.report_score.shape == with_report.tile_index.shape
    position = {t: i for i, t in enumerate(with_report.tile_index.tolist())}
    for tile in range(10, 15):
        assert "report" in with_report.reasons[position[tile]]
    assert sum("report" in reasons for reasons in with_report.reasons) == 64


def bench_select() -> None:
    """Prints selection time for 1,000 and 10,000 tiles of 64-d with 20 prompts."""
    prompt_emb = random_unit(20, seed=99)
    for n_tiles in (1_000, 10_000):
        image = random_unit(n_tiles, seed=0)
        select(image, prompt_emb=prompt_emb)  # warm-up: first torch call pays setup
        timings = []
        for _ in range(5):
            start = time.perf_counter()
            result = select(image, prompt_emb=prompt_emb, finding_emb=random_unit(5, seed=1), cfg=CFG)
            timings.append(time.perf_counter() - start)
        print(
            f"n={n_tiles:>6} k={result.k:>2} selected={len(result):>3} "
            f"median {1000 * float(np.median(timings)):7.1f} ms  "
            f"min {1000 * min(timings):7.1f} ms  (torch threads {torch.get_num_threads()})"
        )


if __name__ == "__main__":
    bench_select()
