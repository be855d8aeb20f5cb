"""The shapes of logged model calls: Bedrock invocation-log records and OpenAI chat-completions logs.

One call becomes a `Call`: who answered (model names, request id, time) and, read on demand,
the conversation as text-only `{role, content}` messages ending with the user's turn, plus the
logged answer. Bodies are recognised by their shape, not by the model id (ids come with region
prefixes, inference-profile ARNs and custom-model ARNs), so one reader serves every model family:

- chat `messages` (Converse/ConverseStream, Anthropic Messages, Amazon Nova, OpenAI-style, AI21);
  `system` as a string or `[{"text"}]` blocks; content as a string or a list of text blocks
  (`{"text"}`, `{"type": "text", "text"}`); images, documents, tool use and tool results are left out;
- a `prompt` string (Meta Llama, Mistral, Anthropic Text Completions, Cohere Command): Llama 3
  headers, `[INST]` turns and `Human:/Assistant:` turns are split into messages;
- `inputText` (Amazon Titan text); `message` + `chat_history` (Cohere Command R).

A record that cannot be a prompt raises `Skip(kind, detail)`; `kind` is the short reason the
summary counts, `detail` what the user reads next to FILE:LINE.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

BEDROCK_SCHEMA = "ModelInvocationLog"
TEXT_BLOCKS = ("text", "input_text", "output_text")  # block types whose `text` is kept
ROLES = {"system": "system", "developer": "developer", "user": "user", "human": "user", "assistant": "assistant",
         "chatbot": "assistant", "model": "assistant", "bot": "assistant", "tool": "tool"}


class Skip(Exception):
    """A record left out: `kind` is counted in the summary, `detail` is shown with FILE:LINE."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


@dataclass
class Call:
    source: str  # "bedrock" | "openai"
    record: dict[str, Any]
    request_id: str | None = None
    models: tuple[str, ...] = ()
    timestamp: datetime | None = None
    # where a user may have attached feedback or a reward (the record, its metadata objects)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    batch_output: bool = False  # an OpenAI Batch output line: an answer waiting for its input line


def text_of(content: Any) -> tuple[str, list[str]]:
    """The text of a message's content and the kinds of the blocks left out (image, toolUse, ...)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    blocks = content if isinstance(content, list) else [content]
    texts, others = [], []
    for block in blocks:
        if isinstance(block, str):
            texts.append(block)
        elif isinstance(block, dict) and block.get("type", "text") in TEXT_BLOCKS and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block, dict):
            others.append(str(block.get("type") or next(iter(block), "empty block")))
        else:
            others.append(type(block).__name__)
    return "\n".join(t for t in texts if t.strip()), others


def chat(messages: Any, system: Any = None) -> list[dict[str, str]]:
    """Text-only messages ending with the user's turn; turns left with no text are dropped and
    neighbours of one role merged, so chat templates that want alternating roles accept them."""
    if not isinstance(messages, list) or not messages:
        raise Skip("no user turn", "the request has no messages")
    turns: list[tuple[str, str, list[str]]] = []
    system_text, _ = text_of(system)
    if system_text.strip():
        turns.append(("system", system_text, []))
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise Skip("unknown body shape", f"messages[{i}] is not an object")
        role = ROLES.get(str(msg.get("role", "")).lower())
        if role is None:
            raise Skip("unknown role", f"messages[{i}] has role {msg.get('role')!r}")
        text, others = text_of(msg.get("content", msg.get("message")))
        turns.append((role, text, others))
    role, text, others = turns[-1]
    if role != "user":
        what = "an assistant prefill" if role == "assistant" else f"a {role} message"
        raise Skip("ends with no user turn", f"the conversation ends with {what}, not the user's turn")
    if not text.strip():
        raise Skip("no text in last user turn",
                   f"the last user turn has no text (only {', '.join(others) or 'empty content'})")
    kept: list[dict[str, str]] = []
    for role, text, _ in turns:
        if role == "tool" or not text.strip():
            continue  # tool results and tool-call-only turns: text only, their call ids are not kept
        if kept and kept[-1]["role"] == role:
            kept[-1]["content"] += "\n\n" + text
        else:
            kept.append({"role": role, "content": text})
    return kept


_LLAMA3 = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>(.*?)(?=<\|eot_id\|>|<\|start_header_id\|>|\Z)", re.S)
_SYS = re.compile(r"<<SYS>>(.*?)<</SYS>>", re.S)
_SPECIAL = re.compile(r"<\|begin_of_text\|>|</?s>|<\|eot_id\|>")


def prompt_messages(prompt: str) -> list[dict[str, str]]:
    """A raw completion prompt split into turns where it follows a known chat format, else one user turn."""
    turns: list[dict[str, str]] = []
    if "<|start_header_id|>" in prompt:  # Llama 3
        turns = [{"role": r, "content": t.strip()} for r, t in _LLAMA3.findall(prompt)]
    elif "[INST]" in prompt:  # Llama 2, Mistral: [INST] user [/INST] answer ...
        pieces = re.split(r"\[/?INST\]", prompt)
        for k, piece in enumerate(pieces[1:]):
            text = _SPECIAL.sub("", piece)
            if k % 2 == 0 and (sys_match := _SYS.search(text)):
                turns.append({"role": "system", "content": sys_match.group(1).strip()})
                text = _SYS.sub("", text)
            turns.append({"role": "user" if k % 2 == 0 else "assistant", "content": text.strip()})
    elif "\n\nHuman:" in prompt:  # Anthropic Text Completions
        pieces = re.split(r"\n\n(Human|Assistant):", prompt)
        if pieces[0].strip():
            turns.append({"role": "system", "content": pieces[0].strip()})
        turns += [{"role": "user" if r == "Human" else "assistant", "content": t.strip()}
                  for r, t in zip(pieces[1::2], pieces[2::2])]
    else:
        turns = [{"role": "user", "content": _SPECIAL.sub("", prompt).strip()}]
    while turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()  # the empty answer the prompt leaves open for the model
    return turns


def request_messages(body: Any) -> list[dict[str, str]]:
    """The conversation of a request body of any known shape (see the module docstring)."""
    if not isinstance(body, dict):
        raise Skip("unknown body shape", f"the request body is {type(body).__name__}, not an object")
    if "messages" in body:
        return chat(body["messages"], body.get("system"))
    if isinstance(body.get("prompt"), str):
        return chat(prompt_messages(body["prompt"]))
    if isinstance(body.get("inputText"), str):
        return chat([{"role": "user", "content": body["inputText"]}])
    if isinstance(body.get("message"), str):  # Cohere Command R
        history = [h for h in body.get("chat_history") or [] if isinstance(h, dict)]
        return chat([*history, {"role": "user", "content": body["message"]}], body.get("preamble"))
    keys = ", ".join(sorted(map(str, body))[:8]) or "none"
    raise Skip("unknown body shape", f"no messages, prompt or inputText in the request body (keys: {keys})")


# Where each family puts its answer; the first path that holds text wins.
_ANSWER_PATHS = (
    ("output", "message", "content"),  # Converse, Nova
    ("content",),  # Anthropic Messages
    ("choices", 0, "message", "content"), ("choices", 0, "text"), ("choices", 0, "delta", "content"),  # OpenAI-style
    ("generation",), ("completion",), ("outputText",), ("text",),  # Llama, Anthropic text, Titan chunk, Cohere R
    ("results", 0, "outputText"), ("outputs", 0, "text"), ("generations", 0, "text"),  # Titan, Mistral, Cohere
    ("contentBlockDelta", "delta", "text"), ("delta", "text"),  # stream chunks (Converse, Anthropic)
)


def _dig(value: Any, path: tuple) -> Any:
    for key in path:
        if isinstance(key, int):
            value = value[key] if isinstance(value, list) and len(value) > key else None
        else:
            value = value.get(key) if isinstance(value, dict) else None
    return value


def answer_text(body: Any) -> str | None:
    """The logged answer's text; a streamed answer (a list of chunks) is joined; None when there is none."""
    if isinstance(body, list):
        text = "".join(answer_text(chunk) or "" for chunk in body)
        return text if text.strip() else None
    if isinstance(body, str):
        return body if body.strip() else None
    for path in _ANSWER_PATHS:
        found = _dig(body, path)
        if found is not None:
            text, _ = text_of(found)
            if text.strip():
                return text
    return None


def parse_time(value: Any) -> datetime | None:
    """ISO 8601 text or a Unix time (seconds, or milliseconds), as an aware UTC datetime; None when neither."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    try:
        parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _dicts(*values: Any) -> list[dict[str, Any]]:
    return [v for v in values if isinstance(v, dict)]


def bedrock_call(rec: dict[str, Any]) -> Call:
    schema = rec.get("schemaType")
    stripped = schema is None and "modelId" in rec and isinstance(rec.get("input"), dict)  # re-exported, say
    if schema != BEDROCK_SCHEMA and not stripped:
        raise Skip("wrong schemaType", f"schemaType is {schema!r}, not {BEDROCK_SCHEMA!r}")
    models = (rec["modelId"],) if isinstance(rec.get("modelId"), str) else ()
    return Call("bedrock", rec, rec.get("requestId") or None, models, parse_time(rec.get("timestamp")),
                _dicts(rec, rec.get("metadata"), rec.get("requestMetadata")))


def _body(value: Any) -> Any:
    """A body logged as a JSON string is read as the JSON it holds."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def bedrock_conversation(call: Call) -> tuple[list[dict[str, str]], str | None, dict[str, Any]]:
    """(messages, logged answer or None, metadata) of a Bedrock record."""
    rec = call.record
    inp = rec.get("input") if isinstance(rec.get("input"), dict) else {}
    out = rec.get("output") if isinstance(rec.get("output"), dict) else {}
    body, answer = _body(inp.get("inputBodyJson")), _body(out.get("outputBodyJson"))
    if body is None and inp.get("inputBodyS3Path"):
        raise Skip("S3-only body", f"the input body was delivered to {inp['inputBodyS3Path']}, not into the log; "
                                   "only inline bodies are read")
    if body is None:
        raise Skip("no input body", "no input.inputBodyJson (is text data delivery on in the logging configuration?)")
    if isinstance(answer, dict) and ("embedding" in answer or "embeddings" in answer):
        raise Skip("embedding call", "the output is an embedding, not text")
    messages = request_messages(body)
    meta = {"operation": rec.get("operation"), "model": call.models[0] if call.models else None,
            "region": rec.get("region"), "request_id": call.request_id,
            "stop_reason": _dig(answer, ("stopReason",)) or _dig(answer, ("stop_reason",)),
            "input_tokens": inp.get("inputTokenCount"), "output_tokens": out.get("outputTokenCount"),
            "error_code": rec.get("errorCode")}
    return messages, answer_text(answer), meta


def openai_call(rec: dict[str, Any]) -> Call:
    """A request/response pair, a Batch API input line, a Batch output line, or a bare request body."""
    if "custom_id" in rec and "response" in rec and "body" not in rec:  # Batch output
        body = _dig(rec, ("response", "body")) or {}
        return Call("openai", rec, str(rec["custom_id"]), _models(body), parse_time(_dig(body, ("created",))),
                    batch_output=True)
    if "custom_id" in rec:  # Batch input
        url = str(rec.get("url", ""))
        if not url.rstrip("/").endswith("/chat/completions"):
            raise Skip("not chat completions", f"a batch line for {url or 'no url'}, not /v1/chat/completions")
        body = rec.get("body") if isinstance(rec.get("body"), dict) else {}
        return Call("openai", rec, str(rec["custom_id"]), _models(body), None, _dicts(rec, body.get("metadata")))
    request = rec.get("request", rec)
    if isinstance(request, dict) and "messages" not in request and isinstance(request.get("body"), dict):
        request = request["body"]
    response = rec.get("response")
    if isinstance(response, dict) and "choices" not in response and isinstance(response.get("body"), dict):
        response = response["body"]
    if not isinstance(request, dict) or "messages" not in request or (request is rec and "model" not in rec):
        raise Skip("unknown record shape", "neither a Bedrock invocation log nor an OpenAI chat-completions log")
    response = response if isinstance(response, dict) else {}
    when = parse_time(response.get("created") or rec.get("timestamp") or rec.get("created_at"))
    return Call("openai", rec, response.get("id") or rec.get("id") or None, _models(request, response), when,
                _dicts(rec, rec.get("metadata"), request.get("metadata")))


def _models(*bodies: dict[str, Any]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(b["model"] for b in bodies if isinstance(b, dict) and isinstance(b.get("model"), str)))


def openai_request(call: Call) -> dict[str, Any]:
    rec = call.record
    if "custom_id" in rec:
        return rec["body"]
    request = rec.get("request", rec)
    return request["body"] if "messages" not in request else request


def openai_conversation(call: Call, answer: Any = None) -> tuple[list[dict[str, str]], str | None, dict[str, Any]]:
    """(messages, logged answer or None, metadata); `answer`: a joined Batch output's ChatCompletion."""
    request = openai_request(call)
    if answer is None and "custom_id" not in call.record:
        answer = call.record.get("response")
        answer = answer.get("body") if isinstance(answer, dict) and "choices" not in answer else answer
    answer = answer if isinstance(answer, dict) else {}
    meta = {"model": (call.models or (None,))[0], "request_id": call.request_id,
            "stop_reason": _dig(answer, ("choices", 0, "finish_reason"))}
    return request_messages(request), answer_text(answer), meta


def identify(rec: Any, fmt: str) -> Call:
    """The Call of one parsed JSON line, by `fmt` (auto: Bedrock when it names a schemaType or a modelId)."""
    if not isinstance(rec, dict):
        raise Skip("not a JSON object", f"got {type(rec).__name__ if rec is not None else 'null'}")
    looks_bedrock = "schemaType" in rec or ("modelId" in rec and "input" in rec)
    if fmt == "bedrock" or (fmt == "auto" and looks_bedrock):
        return bedrock_call(rec)
    return openai_call(rec)
