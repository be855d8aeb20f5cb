"""Hypothesis strategies shared by the fuzz suites: JSON-like values, YAML-ish text, hostile strings."""

from __future__ import annotations

from hypothesis import strategies as st

# strings a user or a model may produce: any unicode, plus the characters parsers trip on
HOSTILE_CHARS = list("{}[]()<>:;,.'\"`\\/|=+-*^%$#@!?~&\n\t\r\x00 ") + ["ANSWER:", "\\boxed{", "{{", "}}", "```"]
text = st.one_of(st.text(max_size=200), st.lists(st.sampled_from(HOSTILE_CHARS), max_size=60).map("".join),
                 st.lists(st.sampled_from(HOSTILE_CHARS + list("abc0123456789")), max_size=300).map("".join))
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), text)
json_values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(st.one_of(text, st.sampled_from(
        ["messages", "role", "content", "id", "reference_answer", "answer", "metadata", "tests", "input", "output",
         "type", "name", "tools"])), children, max_size=6)), max_leaves=25)


def _leaves(tree, prefix=()):
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from _leaves(value, (*prefix, key))
    else:
        yield prefix


def _set(tree, path, value):
    import copy

    tree = copy.deepcopy(tree)
    node = tree
    for key in path[:-1]:
        node = node[key]
    if path:
        node[path[-1]] = value
    return tree


@st.composite
def mutated(draw, base: dict, max_changes: int = 3):
    """`base` (a valid config) with up to `max_changes` leaves replaced by arbitrary values, or removed, or a
    stray key added: inputs that get past the first checks and reach the deep ones."""
    tree = base
    paths = list(_leaves(base))
    for _ in range(draw(st.integers(0, max_changes))):
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if action == "replace":
            tree = _set(tree, path, draw(st.one_of(scalars, json_values)))
        elif action == "remove" and len(path) > 1:
            parent = _set(tree, path, None)
            node = parent
            for key in path[:-1]:
                node = node[key]
            node.pop(path[-1], None)
            tree = parent
        elif action == "add" and len(path) > 1:
            tree = _set(tree, (*path[:-1], draw(text)), draw(scalars))
    return tree
