"""A deterministic "teacher" that writes the paper's three response types from scene symbols.

The paper (§3) prompts a text-only LLM with captions and boxes (`datagen.prompting`, `datagen.teachers`); the
offline demo cannot call one, so this teacher writes the same three types — conversation, detailed description,
complex reasoning — from templates over the scene's known objects. It is not a `datagen.teachers.Teacher` (which
completes a chat prompt into text): it reads a `demo.scenes.Scene` and returns the (question, answer) turns that
`datagen.prompting.parse_reply` would take from an LLM's reply, so `demo.data` turns them into LLaVA samples itself.
Its questions have exactly one true answer, which is what lets the demo measure what a model learned.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from demo.scenes import COLORS, NUMBER_WORDS, POSITIONS, SHAPES, WHERE, Scene

SHORT_ANSWER_SUFFIX = "Answer with one word."
QUESTION_TYPES = ("color", "shape", "count")


@dataclass(frozen=True)
class ExactQuestion:
    """A question with exactly one true one-word answer (what the demo's accuracy measures)."""

    type: str  # color | shape | count
    question: str
    answer: str


def exact_questions(scene: Scene) -> list[ExactQuestion]:
    """Every question with a single true answer: colour of a unique shape, shape at a position, object count."""
    questions = []
    for obj in scene.objects:
        if len(scene.objects_with_shape(obj.shape)) == 1:
            questions.append(ExactQuestion("color", f"What color is the {obj.shape}? {SHORT_ANSWER_SUFFIX}", obj.color))
        questions.append(ExactQuestion("shape", f"What shape is {WHERE[obj.position]}? {SHORT_ANSWER_SUFFIX}", obj.shape))
    questions.append(ExactQuestion("count", f"How many shapes are there? {SHORT_ANSWER_SUFFIX}", NUMBER_WORDS[len(scene.objects)]))
    return questions


def short_answer(word: str) -> str:
    return word.capitalize() + "."


class TemplateTeacher:
    """Writes conversation / detail / complex-reasoning samples for a scene (deterministic given `rng`)."""

    name = "template-teacher"

    def __init__(self, detail_questions: list[str], conversation_turns: tuple[int, int] | None = (2, 4)):
        """`conversation_turns`: the (min, max) number of questions a conversation asks, drawn per conversation;
        `None` asks every question of the scene (`exact_questions`)."""
        self.detail_questions = detail_questions
        self.conversation_turns = conversation_turns

    def conversation(self, scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
        """Multi-turn Q/A with definite answers: the short-answer questions, in random order.

        Asking every question of a scene contrasts its objects within one sample: "What color is the circle?" and
        "What color is the square?" have different answers only if the model finds each object by its shape
        (docs/benchmarks.md, "Ninth round").
        """
        questions = exact_questions(scene)
        rng.shuffle(questions)
        if self.conversation_turns is not None:
            questions = questions[: rng.randint(*self.conversation_turns)]
        # Every turn keeps "Answer with one word.", as the held-out questions have it: with it in the first turn only
        # (fewer tokens) colour was read much worse (docs/benchmarks.md, "Ninth round", `e6` vs `g1`).
        return [(q.question, short_answer(q.answer)) for q in questions]

    def detail(self, scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
        """One turn: a Table 9 instruction and a full description of every object."""
        count = len(scene.objects)
        noun = "shape" if count == 1 else "shapes"
        sentences = [f"The image shows {NUMBER_WORDS[count]} {noun} on a plain, slightly noisy background."]
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.bbox
            size = "large" if (x2 - x1) > 0.26 else "small"
            height = "upper" if (y1 + y2) / 2 < 0.4 else "lower" if (y1 + y2) / 2 > 0.6 else "central"
            where = WHERE[obj.position]
            sentences.append(f"{where[0].upper()}{where[1:]} there is a {size} {obj.name} in the {height} part of the image.")
        return [(rng.choice(self.detail_questions), " ".join(sentences))]

    def complex_reasoning(self, scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
        """One turn that needs combining facts: e.g. the colour of the leftmost shape, or comparing counts."""
        leftmost = min(scene.objects, key=lambda obj: POSITIONS.index(obj.position))
        choices = [
            (
                "What is the color of the leftmost shape, and what kind of shape is it?",
                f"The leftmost shape is {WHERE[leftmost.position]}. It is a {leftmost.shape}, and its color is "
                f"{leftmost.color}. So the leftmost shape is a {leftmost.name}.",
            ),
        ]
        colors = {obj.color for obj in scene.objects}
        if len(scene.objects) > 1:
            same = len(colors) == 1
            choices.append(
                (
                    "Do all the shapes in the image have the same color? Explain.",
                    ("Yes. " if same else "No. ")
                    + "Looking at each shape: "
                    + "; ".join(f"the {obj.shape} {WHERE[obj.position]} is {obj.color}" for obj in scene.objects)
                    + (". They all share one color." if same else f". That makes {len(colors)} different colors."),
                )
            )
        return [rng.choice(choices)]

    def write(self, kind: str, scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
        return {"conversation": self.conversation, "detail": self.detail, "complex": self.complex_reasoning}[kind](scene, rng)


#: Possible answers per question type, used to extract the answer word from a generated sentence.
ANSWER_VOCABULARIES: dict[str, set[str]] = {
    "color": set(COLORS),
    "shape": set(SHAPES),
    "count": set(NUMBER_WORDS.values()),
}
