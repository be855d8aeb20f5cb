"""Conversations with tools as token ids, through the model's own chat template.

A multi-turn trajectory is built token by token (agents/rollout.py): the prompt's ids, then
each assistant turn exactly as sampled (ending with its end-of-turn token), then the ids of
what the environment inserts (tool results, a user's reply) followed by the next assistant
header. Nothing sampled is ever re-tokenised from text. `observation_ids` finds the inserted
ids as the template writes them: it renders a fixed two-message conversation with and
without the new messages and tokenises the difference, prefixed by whatever the template
puts after an assistant's end-of-turn token ("\\n" in ChatML).
"""

from __future__ import annotations

import json
from typing import Any

from rftkit.errors import ConfigError, UserError

_BASE = [{"role": "user", "content": "\x00u"}, {"role": "assistant", "content": "\x00a"}]

# The bundled tool model's template: ChatML, tool names in a system line, Hermes-style
# `<tool_call>{json}</tool_call>` in assistant turns, tool results as `tool` turns.
TOOLS_CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\ntools: ' }}{% for t in tools %}"
    "{{ t['function']['name'] if t['function'] is defined else t['name'] }}{% if not loop.last %}{{ ', ' }}{% endif %}"
    "{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "{{ '<tool_call>{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
    "{% if call['function']['arguments'] is string %}{{ call['function']['arguments'] }}"
    "{% else %}{{ call['function']['arguments'] | tojson }}{% endif %}{{ '}</tool_call>' }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def render(tokenizer, messages: list[dict], tools: list[dict] | None = None, generation_prompt: bool = True) -> str:
    kwargs: dict[str, Any] = {"tools": tools} if tools else {}
    try:
        return tokenizer.apply_chat_template([_plain(m) for m in messages], add_generation_prompt=generation_prompt,
                                             tokenize=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - jinja raises its own types (TemplateError, UndefinedError, TypeError)
        raise UserError(f"the model's chat template cannot render this conversation: {type(exc).__name__}: {exc}") from None


def conversation_ids(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """Token ids of `messages` (with `tools` where the template shows them), then the assistant header."""
    return tokenizer(render(tokenizer, messages, tools), add_special_tokens=False).input_ids


def observation_ids(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """Ids to append after an assistant turn's end-of-turn token: `messages`, then the next assistant header."""
    before = render(tokenizer, _BASE, tools, generation_prompt=False)
    after = render(tokenizer, _BASE + messages, tools)
    if not after.startswith(before):
        raise UserError("the model's chat template renders earlier turns differently once later ones follow; "
                        "rftkit cannot insert observations into a trajectory with it")
    end = tokenizer.decode([tokenizer.eos_token_id])
    at = before.rfind(end, before.rindex("\x00a"))
    between = before[at + len(end):] if at >= 0 else ""  # what follows an end-of-turn token ("\n" in ChatML)
    return tokenizer(between + after[len(before):], add_special_tokens=False).input_ids


def trajectory_ids(tokenizer, steps: list[tuple[str, list[dict]]], tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of a known trajectory after its prompt, laid out as a rollout lays it out.

    `steps`: (assistant text, the observation messages that follow it, [] after the last). Each
    turn is its text's ids plus end-of-turn (mask 1); each observation `observation_ids` (mask 0).
    Used to supervise a model on worked trajectories (scripts/build_tiny_tools_model.py).
    """
    ids, mask = [], []
    for text, observations in steps:
        turn = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids += turn
        mask += [1] * len(turn)
        if observations:
            obs = observation_ids(tokenizer, observations, tools)
            ids += obs
            mask += [0] * len(obs)
    return ids, mask


THINKING_SWITCH = "enable_thinking"  # the chat-template variable Qwen3-style templates read


def has_thinking_switch(tokenizer) -> bool:
    """Whether the tokenizer's chat template reads the thinking switch (`enable_thinking`)."""
    template = getattr(tokenizer, "chat_template", None)
    templates = template.values() if isinstance(template, dict) else [template]
    return any(isinstance(t, str) and THINKING_SWITCH in t for t in templates)


def set_thinking_switch(tokenizer, effort: str | None, model: str) -> None:
    """Map `reasoning.effort` onto the chat template's thinking switch, before any prompt is rendered.

    effort None leaves the template's default. `none` on a template without a switch is accepted:
    the template has no thinking to switch off (a model that thinks anyway is still split). `low` or
    `high` on such a template cannot be honoured, so it stops the run (exit 2) rather than being
    ignored. With a switch, `enable_thinking = (effort != "none")` becomes the template's default:
    a line prepended to the template text, so every path that renders a prompt (engines, episodes,
    validation, a Ray worker given the tokenizer) renders it the same way without each passing a
    keyword, and a caller's explicit `enable_thinking=` still wins. The saved checkpoint's
    tokenizer keeps that default, as it was trained. low and high switch the same way; they
    differ only through the thinking budget (docs/REASONING.md).
    """
    if effort is None:
        return
    if not has_thinking_switch(tokenizer):
        if effort == "none":
            return
        raise ConfigError(f"reasoning.effort: {effort} needs a chat template with a thinking switch "
                          f"({THINKING_SWITCH}), and the template of model {model} has none; set reasoning.effort to "
                          f"none or leave it unset, or use a model whose template reads {THINKING_SWITCH} (e.g. Qwen3)")
    value = "true" if effort != "none" else "false"
    default = f"{{%- if {THINKING_SWITCH} is not defined %}}{{%- set {THINKING_SWITCH} = {value} %}}{{%- endif %}}"
    template = tokenizer.chat_template
    if isinstance(template, dict):
        tokenizer.chat_template = {name: default + t if THINKING_SWITCH in t else t for name, t in template.items()}
    else:
        tokenizer.chat_template = default + template


def _plain(message: dict) -> dict:
    """A message as templates expect it: content a string, tool-call arguments JSON text."""
    out = dict(message)
    out["content"] = "" if out.get("content") is None else out["content"]
    if out.get("tool_calls"):
        out["tool_calls"] = [{**c, "function": {**c["function"], "arguments": _json_text(c["function"].get("arguments"))}}
                             for c in out["tool_calls"]]
    return out


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
