"""Fuzzing the data readers: a row or a file a user can hand rftkit gives items or a UserError, never
another exception, never a hang."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import event, given
from hypothesis import strategies as st

from rftkit.data.items import item_from_row, load_items, validate_file
from rftkit.errors import UserError
from rftkit.types import Item
from tests.fuzz.conftest import bounded
from tests.fuzz.strategies import json_values, mutated, text

roles = st.one_of(st.sampled_from(["system", "user", "assistant", "tool", "developer"]), text)
message = st.fixed_dictionaries({"role": roles, "content": st.one_of(text, json_values)}, optional={
    "tool_calls": json_values, "name": text})
row_like = st.fixed_dictionaries({"messages": st.one_of(st.lists(message, max_size=4), json_values)}, optional={
    "id": json_values, "reference_answer": json_values, "answer": json_values, "metadata": json_values,
    "tests": json_values, "tools": json_values})


VALID_ROW = {"id": "r1", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}],
             "reference_answer": "4", "metadata": {"answer": "4", "tests": [{"input": "1", "output": "2"}]}}


@given(st.one_of(json_values, row_like, mutated(VALID_ROW)), st.booleans())
def test_a_row_is_an_item_or_a_user_error(row, require_reference):
    with bounded():
        try:
            item = item_from_row(row, "row 1", require_reference=require_reference)
        except UserError:
            event("refused: UserError")
            return
    event("accepted")
    assert isinstance(item, Item)


lines = st.one_of(text, json_values.map(json.dumps), row_like.map(json.dumps), mutated(VALID_ROW).map(json.dumps),
                  mutated(VALID_ROW).map(json.dumps), st.binary(max_size=80).map(
    lambda b: b.decode("latin-1")))


@given(st.lists(lines, max_size=8), st.booleans(), st.booleans())
def test_a_jsonl_file_is_items_or_a_user_error(file_lines, require_reference, skip_bad):
    with tempfile.TemporaryDirectory() as tmp, bounded():
        path = Path(tmp) / "data.jsonl"
        path.write_bytes("\n".join(file_lines).encode("utf-8", "surrogatepass"))
        report = validate_file(path, require_reference=require_reference)
        assert report is not None
        try:
            items = load_items(path, require_reference=require_reference, skip_bad=skip_bad)
        except UserError:
            event("refused: UserError")
            return
    event("accepted")
    assert items and all(isinstance(i, Item) for i in items)
