"""Teacher (and judge) language models behind one small interface.

A teacher takes chat messages (`[{"role": "system"|"user"|"assistant", "content": str}, ...]`) and
returns a `TeacherReply`: the text, why generation stopped (`"stop"`, or `"length"` when the token
limit cut it) and the token usage. Transport failures that survive the retries surface as
`TeacherError`, so callers handle one exception type whatever the backend.

Adding a teacher means subclassing `Teacher` and implementing `complete`:

    class EchoTeacher(Teacher):
        name = "echo"

        def complete(self, messages):
            text = messages[-1]["content"]
            return TeacherReply(text=text, finish_reason="stop", usage=TokenUsage())

Implementations here:
- `OpenAITeacher`: any OpenAI-compatible chat-completions endpoint through the `openai` client.
  Retries are the client's own: on connection errors, timeouts, 408/409/429 and 5xx it backs off
  exponentially (0.5 s doubling up to 8 s, minus up to 25 % random jitter) and honours `Retry-After`
  / `retry-after-ms` up to 2 minutes. We only configure `max_retries` and `timeout`.
- `LocalTeacher`: a transformers causal LM run offline with its chat template.

Commands that talk to a teacher (`llava generate-data`, the judge of `llava eval`) take one option group,
`add_teacher_arguments`, and build the teacher with `teacher_from_args`.
"""

from __future__ import annotations

import abc
import argparse
import os
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import Any


@dataclass(frozen=True)
class TokenUsage:
    """Token counts of one or more requests. Instances add up with `+`."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)

    def cost(self, input_price_per_million: float, output_price_per_million: float) -> float:
        """Estimated cost in the currency of the prices (given per million tokens)."""
        return (self.prompt_tokens * input_price_per_million + self.completion_tokens * output_price_per_million) / 1e6


@dataclass(frozen=True)
class TeacherReply:
    """One completion. `finish_reason` is `"stop"` for a natural end and `"length"` when cut off."""

    text: str
    finish_reason: str
    usage: TokenUsage = field(default_factory=TokenUsage)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class TeacherError(RuntimeError):
    """A request that failed for good (retries exhausted, malformed reply, refused request)."""


class Teacher(abc.ABC):
    """A chat model that answers a list of messages. Implementations must be safe to call from threads."""

    name: str = "teacher"

    @abc.abstractmethod
    def complete(self, messages: list[dict[str, str]]) -> TeacherReply:
        """Answer `messages`; raise `TeacherError` when no usable reply could be obtained."""

    def describe(self) -> str:
        """A one-line description for logs and summaries."""
        return self.name


class OpenAITeacher(Teacher):
    """An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp server, TGI, ...).

    Args:
        model: the model name sent with each request.
        base_url: the API root, e.g. `http://localhost:8000/v1`; `None` uses the client's default.
        api_key_env: name of the environment variable that holds the API key.
        temperature: sampling temperature.
        max_tokens: limit on the tokens of each completion; replies that hit it come back with
            `finish_reason == "length"`.
        timeout: seconds before one HTTP attempt is abandoned (and retried).
        max_retries: how many times the client retries a failed attempt before giving up.
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.2,
        max_tokens: int = 1024,
        timeout: float = 60.0,
        max_retries: int = 5,
    ) -> None:
        import openai

        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ValueError(
                f"the teacher's API key is read from the environment variable {api_key_env!r}, which is "
                "not set (servers that need no key accept any value, e.g. `export "
                f"{api_key_env}=none`)"
            )
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._openai = openai
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)

    def describe(self) -> str:
        return f"openai-compatible {self.model} at {self._client.base_url}"

    def complete(self, messages: list[dict[str, str]]) -> TeacherReply:
        openai = self._openai
        try:
            response = self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens
            )
        except openai.APIStatusError as err:
            raise TeacherError(f"HTTP {err.status_code} from the teacher: {err.message}") from err
        except openai.APITimeoutError as err:
            raise TeacherError("the teacher timed out on every attempt") from err
        except openai.APIConnectionError as err:
            raise TeacherError(f"could not reach the teacher: {err}") from err
        except (openai.APIResponseValidationError, ValueError) as err:
            # ValueError: the client decodes the body with `json.loads` and lets JSONDecodeError through.
            raise TeacherError(f"malformed reply from the teacher: {err}") from err
        return self._reply_from_response(response)

    @staticmethod
    def _reply_from_response(response: Any) -> TeacherReply:
        # A server that answers 200 with something other than a chat completion (an HTML error page,
        # a JSON object without choices) comes back from the client as a str or a half-empty model.
        choices = getattr(response, "choices", None)
        if not choices:
            raise TeacherError(f"malformed reply from the teacher (no choices): {str(response)[:200]!r}")
        choice = choices[0]
        usage = getattr(response, "usage", None)
        return TeacherReply(
            text=(choice.message.content or "") if choice.message is not None else "",
            finish_reason=choice.finish_reason or "stop",
            usage=TokenUsage(
                prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            ),
        )


class LocalTeacher(Teacher):
    """A transformers causal LM that answers through its chat template, fully offline.

    Build it from loaded objects (`LocalTeacher(model, tokenizer)`) or from a folder / GGUF file
    with `LocalTeacher.from_pretrained(path)`. Generation runs one request at a time (a lock
    serialises callers), so concurrency above 1 buys nothing with this teacher.
    """

    name = "local"

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 512, temperature: float = 0.0) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the local teacher's tokenizer has no chat template; it cannot format messages")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> LocalTeacher:
        """Load a folder, a Hub id available offline, or a `.gguf` file (dequantised by transformers)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        load_kwargs: dict[str, Any] = {}
        if path.endswith(".gguf"):
            path, load_kwargs["gguf_file"] = os.path.split(os.path.abspath(path))
        tokenizer = AutoTokenizer.from_pretrained(path, **load_kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
        return cls(model, tokenizer, **kwargs)

    def describe(self) -> str:
        return f"local {getattr(self.model.config, 'name_or_path', '') or type(self.model).__name__}"

    def complete(self, messages: list[dict[str, str]]) -> TeacherReply:
        import torch

        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        prompt_length = inputs["input_ids"].shape[1]
        context_size = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if context_size is not None and prompt_length + self.max_new_tokens > context_size:
            raise TeacherError(
                f"prompt of {prompt_length} tokens + {self.max_new_tokens} new tokens exceeds the model's context of {context_size}"
            )
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
        pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self._lock, torch.no_grad():
            output = self.model.generate(
                **inputs.to(self.model.device), max_new_tokens=self.max_new_tokens, pad_token_id=pad_token_id, **sampling
            )
        new_tokens = output[0, prompt_length:]
        eos_ids = self.model.generation_config.eos_token_id
        eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids]) - {None}
        ended = len(new_tokens) > 0 and int(new_tokens[-1]) in eos_ids
        # Without an end-of-sequence token the reply stopped at max_new_tokens: report it as truncated.
        finish_reason = "stop" if ended or len(new_tokens) < self.max_new_tokens else "length"
        return TeacherReply(
            text=self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip(),
            finish_reason=finish_reason,
            usage=TokenUsage(prompt_tokens=prompt_length, completion_tokens=len(new_tokens)),
        )


def build_teacher(
    kind: str, model: str, *, max_tokens: int = 1024, temperature: float = 0.0, **openai_options: Any
) -> Teacher:
    """The teacher (or judge) a command line asks for: `openai` (any compatible endpoint; `openai_options` are
    `OpenAITeacher`'s base_url, api_key_env, timeout, max_retries) or `local` (which has no such options)."""
    if kind == "openai":
        return OpenAITeacher(model, temperature=temperature, max_tokens=max_tokens, **openai_options)
    if kind == "local":
        return LocalTeacher.from_pretrained(model, max_new_tokens=max_tokens, temperature=temperature)
    raise ValueError(f"Unknown teacher kind {kind!r}: expected 'openai' or 'local'.")


@dataclass(frozen=True)
class TeacherDefaults:
    """The defaults of one command's teacher options (`generate-data`'s teacher, the evaluation judge)."""

    kind: str | None = "openai"
    temperature: float = 0.7
    max_tokens: int = 1024
    timeout: float = 120.0
    max_retries: int = 5
    concurrency: int = 4
    api_key_env: str = "OPENAI_API_KEY"


#: `llava generate-data`'s teacher: samples (temperature 0.7) to vary the generated instructions.
GENERATION_TEACHER = TeacherDefaults()
#: `llava eval`'s judge: near-greedy (temperature 0.2, as LLaVA's judge); no default backend.
JUDGE = TeacherDefaults(kind=None, temperature=0.2)


def add_teacher_arguments(
    parser: argparse.ArgumentParser,
    role: str = "teacher",
    defaults: TeacherDefaults = GENERATION_TEACHER,
    *,
    required: bool = False,
    model_required: bool = False,
    unprefixed_aliases: bool = False,
) -> argparse._ArgumentGroup:
    """The teacher option group of a command: `--ROLE openai|local`, `--ROLE-model`, `--ROLE-base-url`,
    `--ROLE-api-key-env`, `--ROLE-temperature`, `--ROLE-max-tokens`, `--ROLE-timeout`, `--ROLE-max-retries`,
    `--ROLE-concurrency` (`dest` ROLE_model, ...; read back by `teacher_from_args`).

    `required`: the backend (`--ROLE`) must be given; `model_required`: `--ROLE-model` must be (otherwise
    `teacher_from_args` asks for it). `unprefixed_aliases`: also accept the option names without the role
    (`--model`, `--base-url`, ...), `generate-data`'s spelling before the options were shared with the judge.
    """
    group = parser.add_argument_group(f"{role} (a chat LLM: datagen.teachers)")

    def add(name: str, **kwargs: Any) -> None:
        flags = [f"--{role}-{name}"] + ([f"--{name}"] if unprefixed_aliases else [])
        group.add_argument(*flags, dest=f"{role}_{name.replace('-', '_')}", **kwargs)

    group.add_argument(f"--{role}", choices=("openai", "local"), default=defaults.kind, required=required,
                       help="openai: any OpenAI-compatible endpoint; local: a transformers causal LM folder or .gguf file"
                       + (f" (default {defaults.kind})" if defaults.kind else ""))
    add("model", required=model_required, default=None,
        help="model name at the endpoint (openai) or a folder / .gguf file (local)")
    add("base-url", default=None, help="API root of an OpenAI-compatible server, e.g. http://localhost:8000/v1")
    add("api-key-env", default=defaults.api_key_env,
        help=f"environment variable holding the API key (default {defaults.api_key_env})")
    add("temperature", type=float, default=defaults.temperature,
        help=f"{role} sampling temperature (default {defaults.temperature:g}; 0 = greedy for local)")
    add("max-tokens", type=int, default=defaults.max_tokens,
        help=f"token limit of each {role} reply (default {defaults.max_tokens})")
    add("timeout", type=float, default=defaults.timeout,
        help=f"seconds per HTTP attempt before it is retried (openai; default {defaults.timeout:g})")
    add("max-retries", type=int, default=defaults.max_retries,
        help="retries per request on 429/5xx/timeouts, with exponential backoff and jitter, honouring Retry-After "
        f"(openai; default {defaults.max_retries})")
    add("concurrency", type=int, default=defaults.concurrency,
        help=f"{role} requests in flight at once (default {defaults.concurrency})")
    return group


def teacher_from_args(args: argparse.Namespace, role: str = "teacher") -> Teacher:
    """The teacher an `add_teacher_arguments(parser, role)` group asks for."""
    option = partial(getattr, args)
    if not option(f"{role}_model"):
        raise ValueError(f"--{role}-model is required with --{role}")
    return build_teacher(
        option(role), option(f"{role}_model"), base_url=option(f"{role}_base_url"),
        api_key_env=option(f"{role}_api_key_env"), temperature=option(f"{role}_temperature"),
        max_tokens=option(f"{role}_max_tokens"), timeout=option(f"{role}_timeout"),
        max_retries=option(f"{role}_max_retries"),
    )
