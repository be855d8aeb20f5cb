"""`score_model` and `label_model`: an AI judge behind any OpenAI-compatible chat endpoint.

Accepted verbatim from OpenAI grader objects, plus where to find the judge:

    {"type": "score_model", "name": "judge", "model": "qwen2.5-7b-instruct",
     "input": [{"role": "system", "content": "Score 0-1. Reply {\\"score\\": x}."},
               {"role": "user", "content": "Q: {{item.question}}\\nA: {{sample.output_text}}"}],
     "range": [0, 1], "sampling_params": {"temperature": 0}, "pass_threshold": 0.5,
     "base_url": "http://localhost:8000/v1", "api_key_env": "OPENAI_API_KEY"}

Each sample is one POST to `{base_url}/chat/completions` (stdlib urllib: no extra
dependency, one connection per call) with the rendered messages. Connection errors,
timeouts, 429 and 5xx are retried with backoff (retry.py) behind one circuit breaker per
grader, so a dead judge costs one fast `model_grader_server_error` per sample; another 4xx
fails the sample at once (the request is wrong, asking again will not help).

Reading the reply (after dropping `<think>...</think>` blocks and ``` fences):
- score_model: a JSON object's `score` (or `result`), a bare JSON number, or else the
  first number in the text. The reward is that raw score, not rescaled to [0, 1], as
  OpenAI returns it; a score outside `range` is a `model_grader_parse_error`.
- label_model: a JSON object's `label`, a JSON string, or the bare text (stripped of
  quotes and a final full stop), matched to `labels` ignoring case; reward 1.0 for one of
  `passing_labels`, else 0.0; any other reply is a `model_grader_parse_error`.

Differences from OpenAI: role `developer` is sent as `system` (most self-hosted chat
templates know only `system`); `sampling_params.max_completions_tokens` is sent as
`max_tokens` (the name every OpenAI-compatible server accepts), other sampling params as
they are. `timeout_s` bounds each socket read, not the total transfer; the executor's
`deadline_s` bounds the whole call.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import math
import os
import re
import urllib.error
import urllib.request
from typing import Any

from rftkit.graders import template
from rftkit.graders.openai import TemplateFields, check_name, is_number
from rftkit.graders.retry import CircuitBreaker, CircuitOpen, Retryable, RetryPolicy, call_with_retries
from rftkit.types import Item, Score

PARSE_ERROR = "model_grader_parse_error"
SERVER_ERROR = "model_grader_server_error"
REFUSAL_ERROR = "model_grader_refusal_error"

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL)
_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class _Failed(Exception):
    """A sample that cannot be judged; the message is the whole error, flag first."""


def _positive(field: str, value: Any, kind: type = float) -> Any:
    if not (is_number(value) and (kind is float or isinstance(value, int))) or value <= 0:
        raise ValueError(f"{field}: must be a positive {'number' if kind is float else 'integer'} (got {value!r})")
    return value


def _content_template(index: int, message: Any) -> tuple[str, str]:
    """(role, content template) of one `input` message; content may be text parts."""
    field = f"input[{index}]"
    if not isinstance(message, dict) or "content" not in message:
        raise ValueError(f"{field}: must be an object with `role` and `content`")
    role = message.get("role", "user")
    if role not in ROLES:
        raise ValueError(f"{field}.role: unknown role {role!r}; valid: {sorted(ROLES)}")
    content = message["content"]
    if isinstance(content, list):  # OpenAI content parts: only text ones can go to a chat endpoint here
        if not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
            raise ValueError(f"{field}.content: only text content parts "
                             "({'type': 'input_text', 'text': ...}) are supported")
        content = "".join(part["text"] for part in content)
    return role, content


def reply_text(reply: str) -> str:
    """The reply without reasoning blocks and code fences."""
    return _FENCE_RE.sub("", _THINK_RE.sub("", reply).strip()).strip()


def _json(text: str) -> Any:
    """The reply as JSON, or the first {...} object inside it, or None."""
    for candidate in (text, text[text.find("{"):text.rfind("}") + 1] if "{" in text else ""):
        try:
            return json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
    return None


class _ChatJudge:
    """The HTTP half shared by both judges; subclasses turn the reply into a Score."""

    def __init__(self, name: str, model: str, input: list, sampling_params: dict | None, base_url: str,
                 api_key_env: str, timeout_s: float, max_attempts: int, concurrency: int):
        self.name = check_name(name)
        if not isinstance(model, str) or not model:
            raise ValueError(f"model: must be the judge model's name (got {model!r})")
        if not isinstance(input, list) or not input:
            raise ValueError("input: must be a non-empty list of {role, content} messages")
        messages = [_content_template(i, m) for i, m in enumerate(input)]
        self.roles = [role for role, _ in messages]
        self.templates = TemplateFields({f"input[{i}].content": text for i, (_, text) in enumerate(messages)})
        self.needs_reference = self.templates.needs_reference
        if sampling_params is not None and not isinstance(sampling_params, dict):
            raise ValueError(f"sampling_params: must be a mapping (got {type(sampling_params).__name__})")
        self.sampling = {("max_tokens" if key == "max_completions_tokens" else key): value
                         for key, value in (sampling_params or {}).items()}
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: must be an http(s) URL (got {base_url!r})")
        if not isinstance(api_key_env, str):
            raise ValueError(f"api_key_env: must be an environment variable name (got {api_key_env!r})")
        self.model, self.url, self.api_key_env = model, base_url.rstrip("/") + "/chat/completions", api_key_env
        self.timeout_s = _positive("timeout_s", timeout_s)
        self.concurrency = _positive("concurrency", concurrency, int)
        policy = RetryPolicy(max_attempts=_positive("max_attempts", max_attempts, int))
        # every attempt timing out, plus the most the backoff can sleep; the executor gets 1 s more to parse
        backoff = sum(min(policy.max_delay_s, policy.base_delay_s * 2**k) for k in range(max_attempts - 1))
        self.policy = dataclasses.replace(policy, deadline_s=timeout_s * max_attempts + backoff)
        self.deadline_s = self.policy.deadline_s + 1.0
        self.breaker = CircuitBreaker()

    # --- HTTP -------------------------------------------------------------------------

    def _post(self, body: bytes) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:  # no key: fine for a local server
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = f"HTTP {exc.code} from {self.url}: {exc.read()[:200].decode('utf-8', 'replace')}"
            if exc.code == 429 or exc.code >= 500:
                raise Retryable(detail) from None
            raise _Failed(f"{SERVER_ERROR}: {detail}") from None
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, truncated replies
            reason = getattr(exc, "reason", exc)
            raise Retryable(f"{type(reason).__name__} calling {self.url}: {reason}") from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, ValueError):
            raise _Failed(f"{SERVER_ERROR}: reply from {self.url} is not JSON: {raw[:200]!r}") from None

    def ask(self, item: Item, text: str) -> str:
        """The judge's reply to this sample; raises _Failed."""
        try:
            contents = self.templates.render(item, text)
        except template.TemplateError as exc:
            raise _Failed(str(exc)) from None
        messages = [{"role": ROLES[role], "content": content} for role, content in zip(self.roles, contents.values())]
        body = json.dumps({"model": self.model, "messages": messages, **self.sampling}).encode()
        try:
            reply = call_with_retries(lambda: self._post(body), self.policy, self.breaker)
        except Retryable as exc:
            raise _Failed(f"{SERVER_ERROR}: {exc} (last of up to {self.policy.max_attempts} attempts)") from None
        except CircuitOpen as exc:
            raise _Failed(f"{SERVER_ERROR}: {self.url}: {exc}") from None
        try:
            message = reply["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            raise _Failed(f"{SERVER_ERROR}: reply has no choices[0].message: {str(reply)[:200]}") from None
        if message.get("refusal"):
            raise _Failed(f"{REFUSAL_ERROR}: {message['refusal']}")
        if not isinstance(message.get("content"), str):
            raise _Failed(f"{PARSE_ERROR}: the judge's reply has no text content")
        return message["content"]

    def grade(self, item: Item, text: str) -> Score:
        try:
            return self.parse(self.ask(item, text))
        except _Failed as exc:
            return Score.failed(str(exc))

    def parse(self, reply: str) -> Score:
        raise NotImplementedError

    def check_item(self, item: Item) -> list[str]:
        return self.templates.check_item(item)


class ScoreModelGrader(_ChatJudge):
    def __init__(self, model: str, input: list, name: str = "score_model", range: list | None = None,
                 sampling_params: dict | None = None, pass_threshold: float | None = None,
                 base_url: str = "http://localhost:8000/v1", api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 30.0, max_attempts: int = 3, concurrency: int = 8):
        super().__init__(name, model, input, sampling_params, base_url, api_key_env, timeout_s, max_attempts,
                         concurrency)
        low_high = [0, 1] if range is None else range
        if (not isinstance(low_high, (list, tuple)) or len(low_high) != 2
                or not all(is_number(v) for v in low_high)
                or not low_high[0] < low_high[1]):
            raise ValueError(f"range: must be [low, high] with low < high (got {range!r})")
        self.low, self.high = float(low_high[0]), float(low_high[1])
        if pass_threshold is not None and not is_number(pass_threshold):
            raise ValueError(f"pass_threshold: must be a number (got {pass_threshold!r})")
        self.pass_threshold = pass_threshold

    def parse(self, reply: str) -> Score:
        text = reply_text(reply)
        found = _json(text)
        if isinstance(found, dict):
            value = next((found[k] for k in ("score", "result") if k in found), None)
            if value is None:
                return Score.failed(f"{PARSE_ERROR}: JSON reply has no `score` or `result`: {text[:200]!r}")
        elif isinstance(found, (int, float)):
            value = found
        else:
            match = _NUMBER_RE.search(text)
            if match is None:
                return Score.failed(f"{PARSE_ERROR}: no score in the judge's reply: {text[:200]!r}")
            value = match.group()
        try:
            score = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            return Score.failed(f"{PARSE_ERROR}: score {value!r} is not a number")
        if not self.low <= score <= self.high:  # NaN fails this too
            return Score.failed(f"{PARSE_ERROR}: score {value!r} outside range [{self.low:g}, {self.high:g}]")
        breakdown = {"score": score}
        if self.pass_threshold is not None:
            breakdown["passed"] = float(score >= self.pass_threshold)
        return Score(reward=score, breakdown=breakdown)


class LabelModelGrader(_ChatJudge):
    def __init__(self, model: str, input: list, labels: list, passing_labels: list, name: str = "label_model",
                 sampling_params: dict | None = None, base_url: str = "http://localhost:8000/v1",
                 api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 30.0, max_attempts: int = 3,
                 concurrency: int = 8):
        super().__init__(name, model, input, sampling_params, base_url, api_key_env, timeout_s, max_attempts,
                         concurrency)
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
            raise ValueError(f"labels: must be a non-empty list of strings (got {labels!r})")
        folded = {label.casefold(): label for label in labels}
        if len(folded) != len(labels):
            raise ValueError(f"labels: must differ ignoring case (got {labels!r})")
        if (not isinstance(passing_labels, list) or not passing_labels
                or not all(isinstance(x, str) and x in labels for x in passing_labels)):
            raise ValueError(f"passing_labels: must be a non-empty list drawn from labels {labels} "
                             f"(got {passing_labels!r})")
        self.labels, self.passing = folded, set(passing_labels)

    def parse(self, reply: str) -> Score:
        text = reply_text(reply)
        found = _json(text)
        if isinstance(found, dict) and isinstance(found.get("label"), str):
            answer = found["label"]
        elif isinstance(found, str):
            answer = found
        else:
            answer = text
        label = self.labels.get(answer.strip().strip("\"'`. \n").casefold())
        if label is None:
            return Score.failed(f"{PARSE_ERROR}: reply {text[:200]!r} is none of the labels "
                                f"{list(self.labels.values())}")
        passed = float(label in self.passing)
        return Score(reward=passed, breakdown={"passed": passed})
