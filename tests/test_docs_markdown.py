"""The README and the user guide render as written: every code fence is closed (an unclosed one swallows the
sections after it), and every ```python block at least compiles."""

from __future__ import annotations

import re

import pytest

from conftest import REPO_ROOT

DOCS = ["README.md", "docs/user_guide.md", "docs/architecture.md", "docs/benchmarks.md"]
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")


def code_blocks(text: str):
    """Yield `(line, info string, body)` per fenced block (CommonMark: a closing fence is the same character, at
    least as long, with nothing after it); raise AssertionError naming the line of an unclosed or misnested fence."""
    opened = None
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if opened is None:
            if match:
                opened, body = (number, match.group(2), match.group(3).strip()), []
            continue
        start, fence, info = opened
        if match and match.group(2)[0] == fence[0] and len(match.group(2)) >= len(fence):
            if match.group(3).strip():
                raise AssertionError(
                    f"line {number}: a fence with an info string ({match.group(3).strip()!r}) while the block "
                    f"opened on line {start} is still open: that block is never closed"
                )
            yield start, info, "\n".join(body)
            opened = None
        else:
            body.append(line)
    if opened is not None:
        raise AssertionError(f"line {opened[0]}: code fence never closed")


@pytest.mark.parametrize("name", DOCS)
def test_every_code_fence_is_closed(name):
    text = (REPO_ROOT / name).read_text(encoding="utf-8")
    try:
        list(code_blocks(text))
    except AssertionError as error:
        raise AssertionError(f"{name}: {error}") from None


@pytest.mark.parametrize("name", DOCS)
def test_every_python_block_compiles(name):
    text = (REPO_ROOT / name).read_text(encoding="utf-8")
    for line, info, body in code_blocks(text):
        if info.split()[:1] == ["python"]:
            try:
                compile(body, f"{name}:{line}", "exec")
            except SyntaxError as error:
                raise AssertionError(f"{name}, the python block of line {line}: {error}") from None


def test_the_lint_catches_an_unclosed_fence():
    broken = "text\n```python\nx = 1\n\n## Next section\n\n```bash\nls\n```\n"
    with pytest.raises(AssertionError, match="line 7: a fence with an info string"):
        list(code_blocks(broken))
    with pytest.raises(AssertionError, match="line 1: code fence never closed"):
        list(code_blocks("```\nopen"))


def test_the_readme_use_snippet_prints_only_the_answer(tmp_path, capsys, monkeypatch):
    """Run the README's "Use" block as written, on a tiny saved model and a real image file."""
    from PIL import Image

    from evaluation_fixtures import save_tiny_image_text_model

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    use = readme[readme.index("## Use"):]
    snippet = next(body for _, info, body in code_blocks(use) if info == "python")
    folder = save_tiny_image_text_model(tmp_path / "model")
    Image.new("RGB", (32, 32), "red").save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet.replace("ORG/NAME", str(folder)), "README.md (Use)", "exec"), namespace)
    printed = capsys.readouterr().out.strip()
    processor, inputs = namespace["processor"], namespace["inputs"]
    prompt_text = processor.decode(inputs["input_ids"][0], skip_special_tokens=True).strip()
    assert prompt_text and not printed.startswith(prompt_text)
