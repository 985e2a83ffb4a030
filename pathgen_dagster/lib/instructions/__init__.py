"""PathGen-Instruct: instruction data built from the pairs that passed the caption gates.

* :mod:`.questions`: the question wordings (topic, template id), varied per patch;
* :mod:`.multiple_choice`: four-option questions whose distractors the measured facts
  contradict (the claims-vs-facts table of ``verbalize.contradictions``);
* :mod:`.conversation`: grounded multi-turn conversations (revised description + facts);
* :mod:`.agent`: the same conversations answered by a model through the caption agents'
  client, cache and retry machinery (strict JSON, every answer checked);
* :mod:`.rules`: the validators (structure, grounding, distractors, balance, duplicates).
"""
