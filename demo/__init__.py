"""The offline main job, `llava demo`, and everything only it needs (not part of the library).

`main` runs the pipeline and `progress` prints how far it is; `settings` holds its design choices and the run's
cache key; `scenes`, `teacher` and `data` make the synthetic data with known truth; `tower` pretrains the small
CLIP vision tower; `projector` starts the projector word-aligned; `report` writes the deliverables; `default_llm`
provides the embedded SmolLM2; `configs/` holds the two stage configs.
"""
