"""Evaluation as in the paper (§5).

- `answer`: batched, resumable answering of a question file by a model (folder or Hub id).
- `judge`: judge-based relative score (Table 3) through a `datagen.teachers.Teacher`.
- `scienceqa`: answer extraction, accuracy per category (Table 6), complement / judge ensembles.
- `pope`: yes/no object-hallucination metrics.
- `report`: `metrics.json` and the Markdown report; `cli`: `llava eval judge|scienceqa|pope`.
- `lmms_eval_plugin`: the model adapter for lmms-eval (needs the `eval` extra).
"""
