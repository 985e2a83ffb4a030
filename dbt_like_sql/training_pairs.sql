-- Image-caption pairs that passed every quality rule, one row per patch, with the lineage
-- of every stage: slide file, patch selection, the three agents, the quality rule set, the
-- Dagster runs and the Delta versions read. Rebuilt one slide at a time.
WITH
    slide AS (
        SELECT * FROM {{ ref('slides') }} AS s WHERE {{ partition_filter('s.slide_id') }}
    ),
    patch AS (
        SELECT * FROM {{ ref('patches') }} AS p WHERE {{ partition_filter('p.slide_id') }}
    ),
    description AS (
        SELECT * FROM {{ ref('descriptions') }} AS d WHERE {{ partition_filter('d.slide_id') }}
    ),
    revision AS (
        SELECT * FROM {{ ref('revised_descriptions') }} AS r
        WHERE {{ partition_filter('r.slide_id') }}
    ),
    summary AS (
        SELECT * FROM {{ ref('captions') }} AS c WHERE {{ partition_filter('c.slide_id') }}
    ),
    verdict AS (
        SELECT * FROM {{ ref('caption_quality') }} AS q WHERE {{ partition_filter('q.slide_id') }}
    )
SELECT
    patch.patch_id AS pair_id,
    patch.slide_id,
    patch.patch_id,
    patch.x,
    patch.y,
    patch.level,
    patch.size_px,
    patch.mpp,
    coalesce(patch.tissue_site, slide.tissue_site) AS tissue_site,
    patch.image_sha256,
    summary.caption,
    summary.clip_tokens,
    revision.revised AS revised_description,
    verdict.passed,
    verdict.quality_score,
    verdict.alignment_score,
    verdict.ruleset_version,
    slide.uri AS slide_uri,
    slide.file_name AS slide_file_name,
    slide.sha256 AS slide_sha256,
    patch.reasons AS selection_reasons,
    patch.selection_config,
    patch.attribute_score,
    patch.top_prompt,
    patch.cluster_id,
    patch.prompt_library_version,
    patch.encoder_id AS image_encoder_id,
    patch.text_encoder_id,
    description.backend AS description_backend,
    description.model_id AS description_model_id,
    description.template_hash AS description_template_hash,
    description.sampling_json AS description_sampling_json,
    revision.backend AS revision_backend,
    revision.model_id AS revision_model_id,
    revision.template_hash AS revision_template_hash,
    revision.sampling_json AS revision_sampling_json,
    summary.backend AS summary_backend,
    summary.model_id AS summary_model_id,
    summary.template_hash AS summary_template_hash,
    summary.sampling_json AS summary_sampling_json,
    slide.run_id AS slide_run_id,
    patch.run_id AS patch_run_id,
    description.run_id AS description_run_id,
    revision.run_id AS revision_run_id,
    summary.run_id AS summary_run_id,
    verdict.run_id AS quality_run_id,
    {{ version('slides') }} AS slides_version,
    {{ version('patches') }} AS patches_version,
    {{ version('descriptions') }} AS descriptions_version,
    {{ version('revised_descriptions') }} AS revised_descriptions_version,
    {{ version('captions') }} AS captions_version,
    {{ version('caption_quality') }} AS caption_quality_version,
    {{ run_id }} AS run_id,
    {{ config_hash }} AS config_hash
FROM patch
JOIN slide USING (slide_id)
JOIN description USING (slide_id, patch_id)
JOIN revision USING (slide_id, patch_id)
JOIN summary USING (slide_id, patch_id)
JOIN verdict USING (slide_id, patch_id)
-- Only pairs the quality checks passed, and only for the caption they checked: a caption
-- rewritten after its check waits for a new verdict instead of slipping through.
WHERE verdict.passed
  AND summary.caption IS NOT NULL
  AND verdict.caption IS NOT DISTINCT FROM summary.caption
-- No ORDER BY: a full rebuild would sort 1.6M wide rows (twice the memory, twice the
-- time); readers that need an order (exports, lineage) sort by pair_id themselves.
