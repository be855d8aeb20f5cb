"""Item files: every kind of bad line is reported with its line number; good lines load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rftkit.data import Problem, ValidationReport, format_report, load_items, validate_file
from rftkit.errors import UserError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "arithmetic"


def user(text: str = "What is 1 + 1?") -> dict[str, str]:
    return {"role": "user", "content": text}


def row(**fields) -> str:
    fields.setdefault("messages", [user()])
    return json.dumps(fields)


def write(tmp_path: Path, lines: list[str | bytes], name: str = "items.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


BAD_FILE = [
    row(id="a", reference_answer="2"),  # 1 good
    '{"id": "b", "messages": [',  # 2
    "[1, 2]",  # 3
    json.dumps({"id": "c"}),  # 4
    row(id="d", messages=[]),  # 5
    row(id="e", messages=["hi"]),  # 6
    row(id="f", messages=[{"role": "bot", "content": "x"}, user()]),  # 7
    row(id="g", messages=[{"role": "system", "content": "  "}, user()]),  # 8
    row(id="h", messages=[user(), {"role": "assistant", "content": "2"}]),  # 9
    row(id="a"),  # 10 duplicate of line 1
    "",  # 11 blank: ignored
    row(id=12, reference_answer=None),  # 12 missing reference (null)
    row(id="m", messages=[{"role": 3, "content": "x"}, user()]),  # 13
    row(id="n", messages=[{"role": "user", "content": ["parts"]}]),  # 14
    row(id="o", metadata={"reference_answer": "5"}),  # 15 good: reference under metadata
]

EXPECTED = [
    (2, "invalid JSON"),
    (3, "not a JSON object"),
    (4, "no `messages`"),
    (5, "non-empty list"),
    (6, "messages[0] is not an object"),
    (7, "unknown role 'bot'"),
    (8, "empty content"),
    (9, "last message is from 'assistant'"),
    (10, "duplicate id 'a' (first used on line 1)"),
    (12, "no `reference_answer`"),
    (13, "`role` must be a string"),
    (14, "`content` must be a string"),
]


def test_each_kind_of_bad_line_is_reported(tmp_path):
    report = validate_file(write(tmp_path, BAD_FILE), require_reference=True)
    for line, reason in EXPECTED:
        assert any(p.line == line and reason in p.reason for p in report.problems), (line, reason, report.problems)
    assert {p.line for p in report.problems} == {line for line, _ in EXPECTED}
    assert [item.id for item in report.items] == ["a", "o"]
    assert report.n_lines == len(BAD_FILE) - 1
    assert not report.ok


def test_report_text(tmp_path):
    path = write(tmp_path, BAD_FILE)
    report = validate_file(path, require_reference=True)
    text = format_report(report)
    assert f"{path}:2: invalid JSON" in text
    assert text.splitlines()[-1] == f"12 bad lines out of 14 in {path}"
    short = format_report(report, max_problems=3).splitlines()
    assert len(short) == 5 and "more problems" in short[3]


def test_a_line_with_several_faults_reports_each(tmp_path):
    bad = row(id="x", messages=[{"role": "bot", "content": ""}])
    report = validate_file(write(tmp_path, [bad]), require_reference=True)
    reasons = [p.reason for p in report.problems]
    assert all(p.line == 1 for p in report.problems)
    assert any("unknown role" in r for r in reasons)
    assert any("empty content" in r for r in reasons)
    assert any("reference_answer" in r for r in reasons)


def test_reference_answer_top_level_or_metadata(tmp_path):
    path = write(
        tmp_path,
        [
            row(id="top", reference_answer="1", difficulty="easy"),
            row(id="meta", metadata={"reference_answer": 2, "source": "gen", "difficulty": "lost"}, difficulty="hard"),
        ],
    )
    top, meta = load_items(path, require_reference=True)
    assert top.reference_answer == "1" and top.metadata == {"difficulty": "easy"}
    assert meta.reference_answer == 2
    assert meta.metadata == {"source": "gen", "difficulty": "hard"}
    assert meta.field("source") == "gen"


def test_ids_default_to_line_and_are_strings(tmp_path):
    path = write(tmp_path, [row(id=7), "", row()])
    items = load_items(path)
    assert [item.id for item in items] == ["7", "line-3"]


def test_duplicate_id_names_both_lines(tmp_path):
    path = write(tmp_path, [row(id="q"), row(id="r"), row(id="q")])
    report = validate_file(path)
    assert report.problems == [Problem(3, "duplicate id 'q' (first used on line 1)")]
    assert f"{path}:3:" in format_report(report) and "line 1" in format_report(report)


def test_int_and_str_ids_collide(tmp_path):
    report = validate_file(write(tmp_path, [row(id=5), row(id="5")]))
    assert [p.line for p in report.problems] == [2]


def test_bad_lines_stop_loading_unless_skipped(tmp_path):
    path = write(tmp_path, [row(id="a"), "not json", row(id="b")])
    with pytest.raises(UserError) as err:
        load_items(path)
    message = str(err.value)
    assert f"{path}:2: invalid JSON" in message
    assert message.splitlines()[-1].startswith("fix these lines, or set data.skip_bad_lines=true")
    assert "the 2 good ones" in message
    assert [item.id for item in load_items(path, skip_bad=True)] == ["a", "b"]


def test_skip_bad_with_no_good_lines_still_fails(tmp_path):
    path = write(tmp_path, ["nope", "[]"])
    with pytest.raises(UserError, match="no line is usable"):
        load_items(path, skip_bad=True)


def test_empty_file(tmp_path):
    for lines in ([], ["", "   "]):
        path = tmp_path / "empty.jsonl"
        path.write_text("\n".join(lines))
        with pytest.raises(UserError, match="no items \\(the file is empty\\)"):
            load_items(path, skip_bad=True)
        report = validate_file(path)
        assert report.n_lines == 0 and not report.ok and not report.problems


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        load_items(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="data file not found"):
        validate_file(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="directory"):
        load_items(tmp_path)


def test_non_utf8_line_is_a_problem(tmp_path):
    path = write(tmp_path, [row(id="a"), b'{"id": "b", "messages": [{"role": "user", "content": "caf\xe9"}]}', row(id="c")])
    report = validate_file(path)
    assert len(report.problems) == 1
    assert report.problems[0].line == 2 and "UTF-8" in report.problems[0].reason
    assert [item.id for item in report.items] == ["a", "c"]


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + row(id="a").encode() + b"\r\n" + row(id="b").encode() + b"\r\n")
    assert [item.id for item in load_items(path)] == ["a", "b"]


def test_clean_file_report(tmp_path):
    path = write(tmp_path, [row(id="a", reference_answer="1")])
    report = validate_file(path, require_reference=True)
    assert isinstance(report, ValidationReport) and report.ok
    assert format_report(report) == f"ok: 1 item in {path}"


@pytest.mark.parametrize("name", ["train", "val", "test"])
def test_shipped_examples_validate(name):
    report = validate_file(EXAMPLES / f"{name}.jsonl", require_reference=True)
    assert report.ok, format_report(report, max_problems=5)


def test_shipped_test_split_is_held_out():
    def questions(name: str) -> set[str]:
        items = load_items(EXAMPLES / f"{name}.jsonl", require_reference=True)
        return {m["content"] for item in items for m in item.messages if m["role"] == "user"}

    test = load_items(EXAMPLES / "test.jsonl")
    assert len(test) >= 200
    assert not questions("test") & questions("train")
