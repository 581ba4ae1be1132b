"""Where a `llava demo` model's answers fail (docs/benchmarks.md, "Seventh round").

    python benchmarks/demo_errors.py RUN_DIR                 # scores RUN_DIR/stage2
    python benchmarks/demo_errors.py RUN_DIR --model DIR     # any saved model, on RUN_DIR's held-out questions

Answers every held-out question of the run again and prints: accuracy by question type and number of objects in
the scene; shape accuracy by the asked position in multi-object scenes; how many wrong colour / shape answers name
an attribute of *another* object of the same scene (a binding error, not a misread); and the commonest confusions.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from transformers import AutoModelForImageTextToText, AutoProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.scenes import WHERE, read_scenes  # noqa: E402
from demo.teacher import ANSWER_VOCABULARIES  # noqa: E402
from evaluation.exact_match import answer_questions, read_questions  # noqa: E402


def asked_position(question: str) -> str:
    """The position a shape question names, in the scene generator's own wording (`WHERE`)."""
    return next(position for position, phrase in WHERE.items() if f" {phrase}?" in question)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--model", type=Path, default=None, help="Model to score (default RUN_DIR/stage2).")
    args = parser.parse_args()
    model_dir = args.model or args.run_dir / "stage2"
    data = args.run_dir / "data"
    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    predictions = answer_questions(model, processor, read_questions(data / "eval_questions.jsonl"), data, ANSWER_VOCABULARIES)
    scenes = {scene.id: scene for scene in read_scenes(data / "eval")}

    by_count = collections.defaultdict(lambda: [0, 0])
    by_position = collections.defaultdict(lambda: [0, 0])
    binding = collections.Counter()
    confusions = collections.Counter()
    for prediction in predictions:
        scene = scenes[prediction.id.rsplit("-q", 1)[0]]
        cell = by_count[(prediction.type, len(scene.objects))]
        cell[0] += prediction.correct
        cell[1] += 1
        if prediction.type == "count" or len(scene.objects) < 2:
            continue
        if prediction.type == "shape":
            where = by_position[asked_position(prediction.question)]
            where[0] += prediction.correct
            where[1] += 1
        if not prediction.correct:
            in_scene = {getattr(obj, prediction.type) for obj in scene.objects}  # the type names the attribute
            binding[(prediction.type, "another object's" if prediction.extracted in in_scene else "not in the scene")] += 1
            confusions[(prediction.type, prediction.answer, prediction.extracted)] += 1

    print(f"model: {model_dir}")
    print("accuracy by question type and objects in the scene:")
    for (kind, objects), (right, total) in sorted(by_count.items()):
        print(f"  {kind:5} {objects} object(s): {right}/{total}")
    print("shape by asked position, multi-object scenes:",
          ", ".join(f"{where} {right}/{total}" for where, (right, total) in sorted(by_position.items())))
    print("wrong colour/shape answers in multi-object scenes:",
          ", ".join(f"{kind} naming {what} attribute: {n}" for (kind, what), n in sorted(binding.items())))
    print("commonest confusions (type, truth, answer):",
          "; ".join(f"{kind} {truth}->{answer} x{n}" for (kind, truth, answer), n in confusions.most_common(6)))


if __name__ == "__main__":
    main()
