"""Run configuration shared by more than one Dagster module (an asset and its checks).

The thresholds themselves are defined once, in the pure library; these classes expose them
as Dagster run config so a user can change them in the launchpad.
"""

import dagster as dg

from pathgen_dagster.lib.quality.fidelity import FidelityConfig

_DEFAULTS = FidelityConfig()


class CaptionQualityConfig(dg.Config):
    """Thresholds of the caption-quality rules and gates; see ``FidelityConfig``."""

    max_clip_tokens: int = _DEFAULTS.max_clip_tokens
    min_caption_words: int = _DEFAULTS.min_caption_words
    min_description_words: int = _DEFAULTS.min_description_words
    max_description_words: int = _DEFAULTS.max_description_words
    min_alignment: float = _DEFAULTS.min_alignment
    min_clip_score: float = _DEFAULTS.min_clip_score
    near_duplicate_similarity: float = _DEFAULTS.near_duplicate_similarity
    max_deleted_fraction: float = _DEFAULTS.max_deleted_fraction
    max_severe_failure_rate: float = _DEFAULTS.max_severe_failure_rate
    min_share_fitting_clip: float = _DEFAULTS.min_share_fitting_clip
    max_agent_failure_rate: float = _DEFAULTS.max_agent_failure_rate
    max_contradiction_rate: float = _DEFAULTS.max_contradiction_rate

    def fidelity(self) -> FidelityConfig:
        return FidelityConfig(**self.model_dump())
