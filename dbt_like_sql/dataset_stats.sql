-- Dataset summary per tissue site and for the whole dataset ('all'): slides, checked
-- captions, pairs, pass rate, caption token lengths, and failures by rule. Reads the whole
-- of training_pairs and caption_quality.
WITH
    site AS (
        SELECT slide_id, coalesce(tissue_site, 'unknown') AS tissue_site
        FROM {{ ref('slides') }}
    ),
    verdict AS (
        SELECT q.*, coalesce(site.tissue_site, 'unknown') AS tissue_site
        FROM {{ ref('caption_quality') }} AS q
        LEFT JOIN site USING (slide_id)
    ),
    pair AS (
        SELECT p.slide_id, p.clip_tokens, p.caption,
               coalesce(p.tissue_site, 'unknown') AS tissue_site
        FROM {{ ref('training_pairs') }} AS p
    ),
    checked AS (
        SELECT coalesce(tissue_site, 'all') AS tissue_site,
               count(DISTINCT slide_id) AS slides,
               count(*) AS checked,
               count(*) FILTER (WHERE NOT passed) AS quarantined,
               count(*) FILTER (WHERE severe_failure) AS severe_failures
        FROM verdict
        GROUP BY GROUPING SETS ((tissue_site), ())
    ),
    paired AS (
        SELECT coalesce(tissue_site, 'all') AS tissue_site,
               count(*) AS pairs,
               count(DISTINCT slide_id) AS slides_with_pairs,
               quantile_cont(clip_tokens, 0.10) AS clip_tokens_p10,
               quantile_cont(clip_tokens, 0.50) AS clip_tokens_p50,
               quantile_cont(clip_tokens, 0.90) AS clip_tokens_p90,
               max(clip_tokens) AS clip_tokens_max,
               avg(len(string_split_regex(trim(caption), '\s+'))) AS mean_caption_words
        FROM pair
        GROUP BY GROUPING SETS ((tissue_site), ())
    ),
    failure AS (
        SELECT coalesce(tissue_site, 'all') AS tissue_site, rule, count(*) AS failures
        FROM (SELECT tissue_site, unnest(failed_rules) AS rule FROM verdict)
        GROUP BY GROUPING SETS ((tissue_site, rule), (rule))
    ),
    failures AS (
        SELECT tissue_site,
               '{' || string_agg(to_json(rule) || ': ' || failures, ', ' ORDER BY rule) || '}'
                   AS failures_by_rule_json
        FROM failure
        GROUP BY tissue_site
    )
SELECT
    tissue_site,
    coalesce(checked.slides, 0) AS slides,
    coalesce(checked.checked, 0) AS checked,
    coalesce(paired.pairs, 0) AS pairs,
    coalesce(checked.quarantined, 0) AS quarantined,
    coalesce(checked.severe_failures, 0) AS severe_failures,
    coalesce(paired.pairs, 0) / nullif(checked.checked, 0) AS pass_rate,
    paired.pairs / nullif(paired.slides_with_pairs, 0) AS pairs_per_slide,
    paired.clip_tokens_p10,
    paired.clip_tokens_p50,
    paired.clip_tokens_p90,
    paired.clip_tokens_max,
    paired.mean_caption_words,
    coalesce(failures.failures_by_rule_json, '{}') AS failures_by_rule_json,
    {{ version('training_pairs') }} AS training_pairs_version,
    {{ version('caption_quality') }} AS caption_quality_version,
    {{ run_id }} AS run_id,
    {{ config_hash }} AS config_hash
FROM checked
FULL JOIN paired USING (tissue_site)
LEFT JOIN failures USING (tissue_site)
ORDER BY tissue_site = 'all' DESC, tissue_site
