"""Table maintenance: compaction, checkpoints and a lineage-safe vacuum."""
