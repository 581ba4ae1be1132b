"""Teachers behind one interface (datagen/teachers.py)."""

import json

import pytest
import torch
from chat_server import chat_server  # noqa: F401  (pytest fixture)
from datagen_fixtures import make_contexts

from datagen.generate import rejected_path, run_generation
from datagen.prompting import ImageContext
from datagen.teachers import LocalTeacher, OpenAITeacher, Teacher, TeacherError, TeacherReply, TokenUsage

KEY_ENV = "DATAGEN_TEST_KEY"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "test-key")


def test_openai_teacher_reports_text_finish_reason_and_usage(chat_server):
    server = chat_server(
        {
            "responses": [
                {"match": "long", "content": "cut off mid", "finish_reason": "length", "prompt_tokens": 7, "completion_tokens": 3},
                {"match": "", "content": "Paris.", "prompt_tokens": 11, "completion_tokens": 2},
            ]
        }
    )
    teacher = OpenAITeacher(model="m", base_url=server.base_url, api_key_env=KEY_ENV, temperature=0.3, max_tokens=50)
    assert isinstance(teacher, Teacher)
    reply = teacher.complete([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}])
    assert reply == TeacherReply(text="Paris.", finish_reason="stop", usage=TokenUsage(11, 2))
    assert not reply.truncated
    cut = teacher.complete([{"role": "user", "content": "a long answer please"}])
    assert cut.truncated and cut.usage.total_tokens == 10
    body = server.requests()[0]["body"]
    assert (body["temperature"], body["max_tokens"], body["model"]) == (0.3, 50, "m")


def test_openai_teacher_raises_teacher_error_when_retries_cannot_help(chat_server):
    server = chat_server({"faults": [{"match": "slow", "kind": "slow", "delay": 2, "times": 10}], "responses": [{"match": "answerable", "content": "ok"}]})
    teacher = OpenAITeacher(model="m", base_url=server.base_url, api_key_env=KEY_ENV, timeout=0.3, max_retries=1)
    with pytest.raises(TeacherError, match="HTTP 404"):  # not retried: a client error
        teacher.complete([{"role": "user", "content": "a question without canned reply"}])
    with pytest.raises(TeacherError, match="timed out on every attempt"):
        teacher.complete([{"role": "user", "content": "slow question"}])
    assert [r["served"] for r in server.requests()] == ["reply", "slow", "slow"]


def test_token_usage_adds_up_and_prices():
    total = TokenUsage(1000, 200) + TokenUsage(500, 100)
    assert (total.prompt_tokens, total.completion_tokens, total.total_tokens) == (1500, 300, 1800)
    assert total.cost(input_price_per_million=2.0, output_price_per_million=10.0) == pytest.approx(0.006)


def tiny_local_model():
    """A 2-layer random Llama with a word-level tokenizer and a chat template, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["hello", "<eos>", "<pad>", "<unk>", "<system>", "<user>", "<assistant>", "capital", "of", "france", "?", "be", "brief"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}> {{ m.content }} {% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(config)
    # A zero final norm makes every logit 0, so greedy decoding always picks token 0 ("hello").
    torch.nn.init.zeros_(model.model.norm.weight)
    return model, tokenizer


def test_local_teacher_uses_the_chat_template_and_reports_truncation():
    model, tokenizer = tiny_local_model()
    teacher = LocalTeacher(model, tokenizer, max_new_tokens=4)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "capital of france ?"}]
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert len(prompt_ids) == 9  # <system> be brief <user> capital of france ? <assistant>

    model.generation_config.eos_token_id = tokenizer.eos_token_id  # never generated here
    reply = teacher.complete(messages)
    assert reply == TeacherReply(text="hello hello hello hello", finish_reason="length", usage=TokenUsage(9, 4))

    model.generation_config.eos_token_id = 0  # "hello" now ends the reply at once
    reply = teacher.complete(messages)
    assert reply.finish_reason == "stop" and reply.usage == TokenUsage(9, 1)

    model.config.max_position_embeddings = 12
    with pytest.raises(TeacherError, match="prompt of 9 tokens \\+ 4 new tokens exceeds the model's context of 12"):
        teacher.complete(messages)


@pytest.mark.slow
def test_local_teacher_with_real_smollm2_answers_and_drives_the_generator(smollm2_gguf, tmp_path):
    teacher = LocalTeacher.from_pretrained(str(smollm2_gguf), max_new_tokens=24)
    reply = teacher.complete([{"role": "user", "content": "What is the capital of France? Answer in one sentence."}])
    assert "Paris" in reply.text and reply.usage.completion_tokens <= 24

    # The same loaded model as a data-generation teacher (loading the GGUF again would cost ~30 s).
    contexts = [ImageContext.from_record(c) for c in make_contexts(1)]
    output = tmp_path / "gen.jsonl"
    summary = run_generation(contexts, ["detail"], LocalTeacher(teacher.model, teacher.tokenizer, max_new_tokens=96), output, progress=False)
    accepted = [json.loads(line) for line in output.read_text().splitlines()]
    rejected = [json.loads(line) for line in rejected_path(output).read_text().splitlines()]
    # Exactly one outcome for the one (image, type); a 135M model may ramble past 96 tokens (rejected as truncated).
    assert len(accepted) + len(rejected) == 1 and summary.prompt_tokens > 500
    if accepted:
        assert accepted[0]["type"] == "detail" and accepted[0]["conversations"][1]["value"].strip()
    else:
        assert rejected[0]["reason"] == "truncated (finish_reason=length)"
