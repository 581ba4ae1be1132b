"""Evaluation as in the paper (§5), answering through the inference layer (`inference.batch`).

- `runner`: the one recipe (load, answer, score, metrics, report) and `EvalTask`, the shape of a task.
- `cli`: the tasks `llava eval judge|scienceqa|pope|exact-match`, each a short definition over the runner.
- `judge`: judge-based relative score (Table 3) through a `datagen.teachers.Teacher`.
- `scienceqa`: option-letter extraction, accuracy per category (Table 6), complement / judge ensembles.
- `pope`: yes/no object-hallucination metrics; `exact_match`: one-word-answer accuracy (the offline demo's).
- `report`: `metrics.json` and the Markdown report.
- `lmms_eval_plugin`: the model adapter for lmms-eval (needs the `eval` extra).
"""
