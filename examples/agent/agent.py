"""A black-box agent for `environment: {type: agent, entry: agent.py:run}` (docs/AGENTS.md).

It uses nothing of rftkit: the official `openai` client, a tool of its own and its own loop.
rftkit hands it a client pointed at the policy and trains on exactly the tokens it got back.
"""

import json

TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression of integers with + - * and parentheses.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}]


def calculator(expression: str) -> str:
    if not expression or set(expression) - set("0123456789+-*() "):
        return "error: only integers, spaces, + - * and parentheses are allowed"
    return str(eval(expression, {"__builtins__": {}}))


async def run(client, item):
    """Ask, run the tools the model calls, ask again; at most 4 requests. None: the grader scores the last answer."""
    messages = list(item["messages"])
    for _ in range(4):
        reply = await client.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
        message = reply.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            return None
        for call in message.tool_calls:
            try:
                arguments = json.loads(call.function.arguments)
                result = calculator(**arguments) if call.function.name == "calculator" else "error: unknown tool"
            except (ValueError, TypeError) as exc:
                result = f"error: {exc}"
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return None
