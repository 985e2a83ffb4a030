-- Captions that failed a quality rule, with the rules that failed and the evidence
-- (unsupported claims, contradictions, near-duplicate), so a person can review them. These
-- are exactly the checked captions that training_pairs leaves out.
SELECT
    q.patch_id,
    q.slide_id,
    s.tissue_site,
    q.caption,
    coalesce(
        nullif(array_to_string(q.failure_reasons, '; '), ''),
        array_to_string(q.failed_rules, ', ')
    ) AS reasons,
    q.failed_rules,
    q.severe_failure,
    q.quality_score,
    q.unsupported_claims,
    q.contradictions,
    q.duplicate_of,
    q.alignment_score,
    q.clip_tokens,
    q.ruleset_version,
    q.run_id AS quality_run_id,
    {{ version('caption_quality') }} AS caption_quality_version,
    {{ run_id }} AS run_id,
    {{ config_hash }} AS config_hash
FROM {{ ref('caption_quality') }} AS q
LEFT JOIN {{ ref('slides') }} AS s USING (slide_id)
WHERE NOT q.passed
ORDER BY q.slide_id, q.patch_id
