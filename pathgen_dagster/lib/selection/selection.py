"""Representative tiles of one slide: PathGen's Stage A selection on tile embeddings.

Three sources propose tiles: the best matches to the site's attribute prompts, the best
matches to the slide's report findings (when a report exists), and a random draw from
every k-means cluster of the image embeddings, for diversity. Their union is capped per
slide, then near-duplicates are dropped. Everything here is pure and seeded: arrays in,
arrays out, the same answer for the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

# torch loads with the first k-means, not with every module that imports this one (the
# code location, the CLI): see pathgen_dagster/resources/encoders.py.
if TYPE_CHECKING:
    import torch

    Embeddings = np.ndarray | torch.Tensor

Reason = Literal["attribute", "report", "cluster"]

# Reasons in priority order: when the union exceeds the cap, earlier reasons win.
REASONS: tuple[Reason, ...] = ("attribute", "report", "cluster")

# float32 embeddings carry ~1e-7 rounding, so a pair at exactly the dedup threshold could
# otherwise fall on either side of it; the margin makes "at least the threshold" hold.
COSINE_TOLERANCE = 1e-6

# Ranking scores are rounded to 0.001 (a cosine of 1e-5) before tiles are ranked on them:
# a text encoder's output moves in its last bits with the batch a sentence is padded in and
# with the BLAS (MiniLM: up to 3e-5 on this scale between two batchings of the same
# sentences), and selection must not depend on that. Scores closer than the grid tie, and
# ties break by tile index (prompts: by prompt order).
SCORE_DECIMALS = 3

_NO_TILES = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class SelectionConfig:
    """Knobs of Stage A selection; every default is PathGen's.

    Attributes:
        top_k_attribute: tiles kept from the attribute-prompt ranking.
        top_k_report: tiles kept from the report-finding ranking.
        tiles_per_cluster_budget: tiles per unit in k = ceil(sqrt(scale * ceil(n / budget))).
        cluster_scale: the scale in that formula.
        max_per_slide: cap on selected tiles per slide; also sets the per-cluster quota.
        dedup_threshold: cosine at or above which two selected tiles are near-duplicates.
            It belongs to the image encoder (each declares one, calibrated by
            scripts/calibrate_dedup.py): None until :func:`with_encoder_threshold` fills
            it in, and :func:`select` refuses None rather than guess.
        seed: seed of the k-means initialisation and of the per-cluster draws.
        kmeans_iterations: most Lloyd iterations; stops earlier once labels settle.
    """

    top_k_attribute: int = 64
    top_k_report: int = 64
    tiles_per_cluster_budget: int = 128
    cluster_scale: float = 1.6
    max_per_slide: int = 256
    dedup_threshold: float | None = None
    seed: int = 0
    kmeans_iterations: int = 50


DEFAULT_SELECTION = SelectionConfig()


def with_encoder_threshold(cfg: SelectionConfig, encoder_threshold: float) -> SelectionConfig:
    """``cfg`` with the encoder's declared near-duplicate threshold, unless one was set."""
    if cfg.dedup_threshold is not None:
        return cfg
    return replace(cfg, dedup_threshold=encoder_threshold)


@dataclass(frozen=True)
class SelectionResult:
    """Selected tiles of one slide, by ascending tile index, with why and how well each matched.

    Attributes:
        tile_index: int64 (m,) rows of the input embeddings that were selected, ascending.
        reasons: per tile, the sorted subset of {"attribute", "cluster", "report"} that
            proposed it (before the cap).
        attribute_score: float32 (m,) best 100 x cosine over the attribute prompts.
        top_prompt: int64 (m,) index of that best prompt, for showing matched prompts.
        report_score: float32 (m,) 100 x cosine summed over findings; None without findings.
        cluster_id: int64 (m,) k-means cluster of each tile.
        k: clusters asked of k-means (PathGen's formula; 0 for no tiles).
        quota: tiles drawn per cluster at most.
        n_candidates: size of the union of proposals, before the cap.
        n_after_cap: tiles left after the cap, before near-duplicate removal.
    """

    tile_index: np.ndarray
    reasons: list[list[str]]
    attribute_score: np.ndarray
    top_prompt: np.ndarray
    report_score: np.ndarray | None
    cluster_id: np.ndarray
    k: int
    quota: int
    n_candidates: int
    n_after_cap: int

    def __len__(self) -> int:
        return len(self.tile_index)


def cluster_count(n_tiles: int, cfg: SelectionConfig = DEFAULT_SELECTION) -> int:
    """Returns PathGen's k = ceil(sqrt(1.6 * ceil(n_tiles / 128))); 0 for no tiles."""
    if n_tiles <= 0:
        return 0
    budget_units = math.ceil(n_tiles / cfg.tiles_per_cluster_budget)
    return math.ceil(math.sqrt(cfg.cluster_scale * budget_units))


def per_cluster_quota(k: int, cfg: SelectionConfig = DEFAULT_SELECTION) -> int:
    """Returns the tiles drawn per cluster, max(1, floor(256 / k)); 0 without clusters."""
    if k <= 0:
        return 0
    return max(1, cfg.max_per_slide // k)


def similarity(image_emb: Embeddings, text_emb: Embeddings) -> np.ndarray:
    """Returns float32 (n_tiles, n_texts) of 100 x cosine similarity, CLIP's logit scale,
    rounded to ``SCORE_DECIMALS``."""
    image, text = _as_matrix(image_emb, "image_emb"), _as_matrix(text_emb, "text_emb")
    if image.shape[1] != text.shape[1]:
        raise ValueError(
            f"image embeddings are {image.shape[1]}-d but text embeddings are "
            f"{text.shape[1]}-d: encode both with the same model"
        )
    return _on_grid(100.0 * (_unit_rows(image) @ _unit_rows(text).T))


def attribute_scores(
    image_emb: Embeddings, prompt_emb: Embeddings
) -> tuple[np.ndarray, np.ndarray]:
    """Returns each tile's best similarity over the prompts and the index of that prompt.

    Raises:
        ValueError: there are no prompts (the prompt library always has a generic set).
    """
    if len(prompt_emb) == 0:
        raise ValueError("no attribute prompts: pass at least the generic prompt set")
    scores = similarity(image_emb, prompt_emb)
    top_prompt = scores.argmax(axis=1)
    return scores[np.arange(len(scores)), top_prompt], top_prompt.astype(np.int64)


def report_scores(image_emb: Embeddings, finding_emb: Embeddings | None) -> np.ndarray | None:
    """Returns each tile's similarity summed over the report findings; None without findings."""
    if finding_emb is None or len(finding_emb) == 0:
        return None
    return _on_grid(similarity(image_emb, finding_emb).sum(axis=1))


def kmeans(
    embeddings: Embeddings, k: int, *, seed: int, iterations: int
) -> tuple[np.ndarray, np.ndarray]:
    """Returns int64 cluster labels (n,) and float32 centroids (min(k, n), d).

    Lloyd's algorithm on the L2-normalised embeddings, initialised by k-means++ with a
    seeded generator, so the same inputs and seed always give the same clusters. k is
    capped at n; duplicate points may leave a cluster empty, which keeps its centroid.
    """
    import torch

    points = torch.nn.functional.normalize(
        torch.as_tensor(_as_matrix(embeddings, "embeddings")), dim=1
    )
    k = min(k, len(points))
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, points.shape[1]), dtype=np.float32)
    generator = torch.Generator().manual_seed(seed)
    centroids = _kmeans_plus_plus(points, k, generator)
    labels = _nearest(points, centroids)
    for _ in range(iterations):
        sums = torch.zeros_like(centroids).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        new_labels = _nearest(points, centroids)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return labels.numpy().astype(np.int64), centroids.numpy()


def draw_per_cluster(labels: np.ndarray, quota: int, seed: int) -> np.ndarray:
    """Returns int64 tile indices, ascending: up to ``quota`` drawn at random from each cluster."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    draws = [
        rng.choice(members, size=min(quota, len(members)), replace=False)
        for members in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    return np.sort(np.concatenate(draws)).astype(np.int64) if draws else _NO_TILES


def deduplicate(embeddings: Embeddings, order: np.ndarray, threshold: float) -> np.ndarray:
    """Returns the indices of ``order`` that survive near-duplicate removal, in that order.

    Greedy in priority order: a tile is dropped when its cosine with an earlier kept tile
    is at least ``threshold``, so of two near-duplicates the higher-priority one stays.
    """
    order = np.asarray(order, dtype=np.int64)
    if order.size == 0:
        return order
    # float64 so the comparison at the threshold is decided by the data, not by rounding.
    unit = _unit_rows(_as_matrix(embeddings, "embeddings")[order].astype(np.float64))
    cosine = unit @ unit.T
    keep = np.ones(len(order), dtype=bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= cosine[i, i + 1 :] < threshold - COSINE_TOLERANCE
    return order[keep]


def select(
    image_emb: Embeddings,
    *,
    prompt_emb: Embeddings,
    finding_emb: Embeddings | None = None,
    retrieval_emb: Embeddings | None = None,
    cfg: SelectionConfig = DEFAULT_SELECTION,
) -> SelectionResult:
    """Returns the representative tiles of one slide and why each was chosen.

    Proposals: the top ``top_k_attribute`` tiles by attribute score, the top
    ``top_k_report`` by report score (only with findings), and ``quota`` random tiles per
    k-means cluster. When their union exceeds ``max_per_slide``, tiles are kept in this
    priority: attribute picks by attribute score, then report picks by report score, then
    cluster draws taken round-robin across clusters (each cluster's best attribute score
    first), so a cap still leaves every cluster represented. Near-duplicates are removed
    last, in the same priority.

    Args:
        image_emb: (n_tiles, d) tile embeddings; zero tiles give an empty result.
        prompt_emb: (n_prompts, d) attribute prompt embeddings, in the same space.
        finding_emb: (n_findings, d) report finding embeddings, or None without a report.
        retrieval_emb: (n_tiles, d') the tiles' side of prompt retrieval when it lives in
            another space than ``image_emb`` (the weight-free default ranks MiniLM
            embeddings of measured-morphology sentences); None ranks ``image_emb`` itself,
            as PathGen did with CLIP. Clustering and dedup always use ``image_emb``.
        cfg: selection knobs; PathGen's by default.
    """
    if cfg.dedup_threshold is None:
        raise ValueError(
            "SelectionConfig.dedup_threshold is None: near-duplicate thresholds belong to the "
            "image encoder; pass with_encoder_threshold(cfg, encoder.dedup_threshold)"
        )
    image = _as_matrix(image_emb, "image_emb")
    ranked = image if retrieval_emb is None else _as_matrix(retrieval_emb, "retrieval_emb")
    if len(ranked) != len(image):
        raise ValueError(f"retrieval_emb has {len(ranked)} rows for {len(image)} tiles")
    attribute, top_prompt = attribute_scores(ranked, prompt_emb)
    report = report_scores(ranked, finding_emb)
    k = cluster_count(len(image), cfg)
    quota = per_cluster_quota(k, cfg)
    labels, _ = kmeans(image, k, seed=cfg.seed, iterations=cfg.kmeans_iterations)
    drawn = draw_per_cluster(labels, quota, cfg.seed)

    proposals: dict[Reason, np.ndarray] = {
        "attribute": _best_first(attribute, cfg.top_k_attribute),
        "report": _best_first(report, cfg.top_k_report) if report is not None else _NO_TILES,
        "cluster": _round_robin(drawn, labels[drawn], attribute[drawn]),
    }
    priority = np.concatenate([proposals[reason] for reason in REASONS])
    _, first_seen = np.unique(priority, return_index=True)
    candidates = priority[np.sort(first_seen)]
    capped = candidates[: cfg.max_per_slide]
    tiles = np.sort(deduplicate(image, capped, cfg.dedup_threshold))

    proposed_by = {reason: set(indices.tolist()) for reason, indices in proposals.items()}
    return SelectionResult(
        tile_index=tiles,
        reasons=[sorted(r for r in REASONS if t in proposed_by[r]) for t in tiles.tolist()],
        attribute_score=attribute[tiles],
        top_prompt=top_prompt[tiles],
        report_score=report[tiles] if report is not None else None,
        cluster_id=labels[tiles],
        k=k,
        quota=quota,
        n_candidates=len(candidates),
        n_after_cap=len(capped),
    )


def _as_matrix(values: Embeddings, name: str) -> np.ndarray:
    """Returns ``values`` as a float32 numpy matrix, whether numpy or torch came in."""
    if not isinstance(values, np.ndarray) and hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    matrix = np.asarray(values, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-d (rows, dim), got shape {matrix.shape}")
    return matrix


def _on_grid(scores: np.ndarray) -> np.ndarray:
    return np.round(scores, SCORE_DECIMALS).astype(np.float32)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Returns rows scaled to unit length; all-zero rows stay zero instead of becoming NaN."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, np.finfo(matrix.dtype).tiny)


def _best_first(scores: np.ndarray, top_k: int) -> np.ndarray:
    """Returns the indices of the ``top_k`` highest scores, best first, ties by index."""
    return np.argsort(-scores, kind="stable")[:top_k].astype(np.int64)


def _round_robin(indices: np.ndarray, groups: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Returns ``indices`` taking each group's best, then each group's second best, ..."""
    by_group = np.lexsort((indices, -scores, groups))
    sorted_groups = groups[by_group]
    group_start = np.searchsorted(sorted_groups, sorted_groups, side="left")
    rank = np.empty(len(indices), dtype=np.int64)
    rank[by_group] = np.arange(len(indices)) - group_start
    return indices[np.lexsort((indices, -scores, rank))]


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Returns k initial centroids, each drawn with probability proportional to D^2."""
    import torch

    chosen = [int(torch.randint(len(points), (1,), generator=generator))]
    distance = ((points - points[chosen[0]]) ** 2).sum(dim=1)
    for _ in range(1, k):
        total = distance.sum()
        if total > 0:
            chosen.append(int(torch.multinomial(distance / total, 1, generator=generator)))
        else:
            # Every point already coincides with a centroid (duplicates): any point will do.
            chosen.append(int(torch.randint(len(points), (1,), generator=generator)))
        distance = torch.minimum(distance, ((points - points[chosen[-1]]) ** 2).sum(dim=1))
    return points[chosen].clone()


def _nearest(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Returns the index of each point's nearest centroid; ties go to the lower index."""
    # ||x - c||^2 without the ||x||^2 term, which is the same for every centroid.
    distance = (centroids**2).sum(dim=1) - 2 * points @ centroids.T
    return distance.argmin(dim=1)
