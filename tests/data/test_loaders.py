"""Loaders behind one Item stream: parquet in verl's layout, Hugging Face datasets, lazy JSONL; validation that streams."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rftkit.cli import app
from rftkit.data import format_report, load_items
from rftkit.data.items import IdTable, validate_file
from rftkit.data.loaders import load_source, parse_columns, resolve, validate_source
from rftkit.errors import UserError
from rftkit.types import Item
from tests.conftest import EXAMPLES, REPO

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

_spec = importlib.util.spec_from_file_location("bench_data_validate", REPO / "bench" / "data_validate.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def user(text: str = "What is 1 + 1?") -> dict:
    return {"role": "user", "content": text}


def verl_row(i: int, question: str | None = None, answer: str | None = "2", **override) -> dict:
    """One row as verl's examples/data_preprocess/gsm8k.py writes it."""
    question = question if question is not None else f"What is {i} + 1?"
    row = {"data_source": "openai/gsm8k", "prompt": [user(question)], "ability": "math",
           "reward_model": {"style": "rule", "ground_truth": answer},
           "extra_info": {"split": "train", "index": i, "answer": f"#### {answer}", "question": question}}
    return {**row, **override}


def write_parquet(path: Path, rows: list[dict], row_group_size: int | None = None, schema=None) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)
    return path


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """load_dataset(folder) converts files into its cache: keep that in the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


# ---- parquet, verl's layout -------------------------------------------------------------------------------


def test_verl_parquet_reads_as_items_across_row_groups(tmp_path):
    path = write_parquet(tmp_path / "train.parquet", [verl_row(i, answer=str(i + 1)) for i in range(25)],
                         row_group_size=4)
    assert pq.ParquetFile(path).metadata.num_row_groups == 7
    items = load_source(path)
    assert len(items) == 25 and not isinstance(items, list)
    first = items[0]
    assert first.id == "0" and first.messages == [user("What is 0 + 1?")] and first.reference_answer == "1"
    assert first.metadata == {"split": "train", "index": 0, "answer": "#### 1", "question": "What is 0 + 1?",
                              "data_source": "openai/gsm8k", "ability": "math",
                              "reward_model": {"style": "rule", "ground_truth": "1"}}
    assert first.field("data_source") == "openai/gsm8k" and first.field("reward_model.style") == "rule"
    order = [13, 2, 24, 3, 0, 13, -1]  # back and forth across row groups, past the small cache
    assert [items[i].reference_answer for i in order] == [str(i % 25 + 1) for i in order]
    assert [it.id for it in items] == [str(i) for i in range(25)]
    assert [it.id for it in items[20:23]] == ["20", "21", "22"]
    with pytest.raises(IndexError):
        items[25]
    copy = pickle.loads(pickle.dumps(items))  # no open file or cached table travels
    assert copy._file is None and not copy._groups
    assert copy[7] == items[7] and list(copy._groups) == [1]


def test_verl_prompt_as_plain_string_and_no_extra_info(tmp_path):
    rows = [{"prompt": "What is 2 + 2?", "reward_model": {"ground_truth": "4", "style": "rule"}},
            {"prompt": "What is 3 + 3?", "reward_model": {"ground_truth": "6", "style": "rule"}}]
    items = load_source(write_parquet(tmp_path / "s.parquet", rows), require_reference=True)
    assert [(i.id, i.messages, i.reference_answer) for i in items] == [
        ("row-1", [user("What is 2 + 2?")], "4"), ("row-2", [user("What is 3 + 3?")], "6")]


def test_message_structs_drop_arrow_filled_nulls(tmp_path):
    # one message carries `name`: Arrow gives every message a `name` field, null where it was absent
    rows = [verl_row(0, prompt=[{"role": "system", "content": "Be brief.", "name": "sys"}, user("Hi?")])]
    item = load_source(write_parquet(tmp_path / "m.parquet", rows))[0]
    assert item.messages == [{"role": "system", "content": "Be brief.", "name": "sys"}, user("Hi?")]


BAD_ROWS = [
    verl_row(0),  # 1 good
    verl_row(1, prompt=None),  # 2 missing prompt
    verl_row(2, question=""),  # 3 empty content
    verl_row(3, prompt=[{"role": "user", "content": None}]),  # 4 wrong type in a message
    verl_row(4, answer=None),  # 5 missing reference (required)
    verl_row(0),  # 6 duplicate extra_info.index
    verl_row(6, prompt=[{"role": "assistant", "content": "2"}]),  # 7 ends on the assistant
    verl_row(7),  # 8 good
]


def test_bad_parquet_rows_are_reported_with_their_row_numbers(tmp_path):
    path = write_parquet(tmp_path / "bad.parquet", BAD_ROWS, row_group_size=3)
    report = validate_source(path, require_reference=True)
    text = format_report(report)
    assert [(p.line, p.reason) for p in report.problems] == [
        (2, "`prompt` must be a list of {role, content} messages or a string (got null)"),
        (3, "messages[0]: empty content"),
        (4, "messages[0]: `content` must be a string"),
        (5, "no reference answer (`reward_model.ground_truth` is null)"),
        (6, "duplicate id '0' (first used on row 1)"),
        (7, "last message is from 'assistant'; it must be the user's turn the model answers"),
    ]
    assert f"{path}:row 2: `prompt` must be" in text and text.endswith(f"6 bad rows out of 8 in {path}")
    assert report.items == [] and report.n_good == 2
    with pytest.raises(UserError) as exc:
        load_source(path, require_reference=True)
    assert f"{path}:row 6: duplicate id" in str(exc.value)
    assert "fix these rows, or set data.skip_bad_lines=true to train on the 2 good ones" in str(exc.value)
    good = load_source(path, require_reference=True, skip_bad=True)
    assert [i.id for i in good] == ["0", "7"]


def test_wrong_column_types_are_row_faults(tmp_path):
    path = tmp_path / "types.parquet"
    pq.write_table(pa.table({"prompt": pa.array([7, None], pa.int64()), "answer": ["1", "2"]}), path)
    report = validate_source(path)
    assert [(p.line, p.reason) for p in report.problems] == [
        (1, "`prompt` must be a list of {role, content} messages or a string (got int)"),
        (2, "`prompt` must be a list of {role, content} messages or a string (got null)")]
    pq.write_table(pa.table({"q": ["hi", "there"], "sys": [3, None], "uid": [True, False]}), path)
    report = validate_source(path, columns={"prompt": "q", "system": "sys", "id": "uid"})
    assert [(p.line, p.reason) for p in report.problems] == [
        (1, "`sys` must be a string (got int)"), (1, "`id` must be a string or an integer"),
        (2, "`id` must be a string or an integer")]


def test_empty_parquet_and_not_parquet(tmp_path):
    empty = write_parquet(tmp_path / "empty.parquet", [], schema=pa.schema([("prompt", pa.string())]))
    with pytest.raises(UserError, match=r"empty.parquet: no items \(it has no rows\)"):
        load_source(empty)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(UserError, match="not a readable parquet file"):
        load_source(junk)
    with pytest.raises(UserError, match="data file not found"):
        load_source(tmp_path / "missing.parquet")


# ---- column mapping --------------------------------------------------------------------------------------


def test_string_prompt_column_system_and_answer_column(tmp_path):
    rows = [{"question": "What is 2 + 2?", "answer": "4", "sys": "Answer as ANSWER: <n>.", "level": 1},
            {"question": "What is 5 - 1?", "answer": "4", "sys": None, "level": 2}]
    path = write_parquet(tmp_path / "q.parquet", rows)
    columns = {"prompt": "question", "system": "sys", "reference_answer": "answer"}
    items = load_source(path, columns=columns, require_reference=True)
    assert items[0].messages == [{"role": "system", "content": "Answer as ANSWER: <n>."}, user("What is 2 + 2?")]
    assert items[1].messages == [user("What is 5 - 1?")]  # a null system column: no system message
    assert [i.reference_answer for i in items] == ["4", "4"]
    assert items[0].metadata == {"answer": "4", "level": 1}


def test_dotted_struct_reference_and_id_columns(tmp_path):
    rows = [{"conv": [user("Hi?")], "gold": {"final": "x", "steps": 2}, "uid": "u-1"},
            {"conv": [user("Ho?")], "gold": {"final": None, "steps": 1}, "uid": "u-2"}]
    path = write_parquet(tmp_path / "d.parquet", rows)
    columns = {"messages": "conv", "reference_answer": "gold.final", "id": "uid"}
    report = validate_source(path, columns=columns, require_reference=True)
    assert [(p.line, p.reason) for p in report.problems] == [(2, "no reference answer (`gold.final` is null)")]
    item = load_source(path, columns=columns, require_reference=True, skip_bad=True)[0]
    assert (item.id, item.messages, item.reference_answer) == ("u-1", [user("Hi?")], "x")
    with pytest.raises(UserError, match=r"no column 'gold.answer' \(data.columns.reference_answer\); its columns: "
                                         r"conv, gold, gold.final, gold.steps, uid"):
        load_source(path, columns={"messages": "conv", "reference_answer": "gold.answer"})


def test_column_mapping_mistakes_are_user_errors(tmp_path):
    path = write_parquet(tmp_path / "c.parquet", [{"question": "Hi?", "answer": "1"}])
    with pytest.raises(UserError, match="no `prompt` column .* or `messages` column.*its columns: question, answer"):
        load_source(path)
    with pytest.raises(UserError, match="unknown data.columns key 'question'"):
        load_source(path, columns={"question": "question"})
    with pytest.raises(UserError, match="not both"):
        load_source(path, columns={"prompt": "question", "messages": "question"})
    with pytest.raises(UserError, match="system goes with data.columns.prompt"):
        load_source(path, columns={"system": "question"})
    report = validate_source(path, columns={"prompt": "question"}, require_reference=True)
    assert [p.reason for p in report.problems] == [
        "no reference answer (no `reward_model.ground_truth` or `reference_answer` column; "
        "name one with data.columns.reference_answer)"]
    assert load_source(path, columns={"prompt": "question"})[0].messages == [user("Hi?")]


def test_parse_columns():
    assert parse_columns(["prompt=question", "reference_answer = reward_model.ground_truth"]) == {
        "prompt": "question", "reference_answer": "reward_model.ground_truth"}
    assert parse_columns(['{"prompt": "q", "id": "uid"}', "system=s"]) == {"prompt": "q", "id": "uid", "system": "s"}
    assert parse_columns(None) == {}
    for bad in (["prompt"], ["=x"], ["{nope"], ['{"prompt": 3}']):
        with pytest.raises(UserError, match="--columns"):
            parse_columns(bad)


# ---- Hugging Face datasets ---------------------------------------------------------------------------------

QA = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(6)]
QA_COLUMNS = {"prompt": "question", "reference_answer": "answer"}


def test_save_to_disk_dataset_in_verl_layout(tmp_path):
    folder = tmp_path / "verl-ds"
    datasets.Dataset.from_list([verl_row(i, answer=str(i + 1)) for i in range(5)]).save_to_disk(str(folder))
    items = load_source(folder, require_reference=True)
    parquet = load_source(write_parquet(tmp_path / "same.parquet", [verl_row(i, answer=str(i + 1)) for i in range(5)]))
    assert list(items) == list(parquet)  # the same rows give the same Items, whichever reader
    assert items[4].id == "4" and items[4].reference_answer == "5" and items[4].metadata["data_source"] == "openai/gsm8k"
    assert pickle.loads(pickle.dumps(items))[2] == items[2]


def test_dataset_dict_splits(tmp_path):
    folder = tmp_path / "dd"
    full = datasets.Dataset.from_list(QA)
    datasets.DatasetDict({"train": full, "test": full.select(range(2))}).save_to_disk(str(folder))
    train = load_source(folder, columns=QA_COLUMNS)
    test = load_source(f"{folder}:test", columns=QA_COLUMNS)
    assert len(train) == 6 and len(test) == 2 and len(load_source(folder, columns=QA_COLUMNS, split="test")) == 2
    assert test[1] == Item(id="row-2", messages=[user("What is 1 + 1?")], reference_answer="2", metadata={"answer": "2"})
    with pytest.raises(UserError, match=r"no split 'dev'; its splits: train, test \(pick one as .*dd:SPLIT\)"):
        load_source(f"{folder}:dev", columns=QA_COLUMNS)
    assert resolve(f"{folder}:test") == (folder, "hf", "test")
    report = validate_source(f"{folder}:test", columns=QA_COLUMNS)
    assert format_report(report) == f"ok: 2 items in {folder}:test"
    # a DatasetDict without `train` and one split: that split
    only = tmp_path / "only"
    datasets.DatasetDict({"validation": full}).save_to_disk(str(only))
    assert len(load_source(only, columns=QA_COLUMNS)) == 6


def test_folder_of_parquet_and_json_files(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    full = datasets.Dataset.from_list(QA)
    full.to_parquet(str(files / "train.parquet"))
    full.select(range(3)).to_parquet(str(files / "test.parquet"))
    assert len(load_source(files, columns=QA_COLUMNS)) == 6 and len(load_source(f"{files}:test", columns=QA_COLUMNS)) == 3
    jsonl = tmp_path / "json"
    jsonl.mkdir()
    (jsonl / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in QA[:4] + [{"question": "", "answer": "0"}]))
    report = validate_source(jsonl, columns=QA_COLUMNS)
    assert [(p.line, p.reason) for p in report.problems] == [(5, "messages[0]: empty content")]
    assert format_report(report).startswith(f"{jsonl}:train:row 5: messages[0]: empty content")


def test_hf_folder_mistakes(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a Hugging Face dataset folder"):
        load_source(tmp_path / "empty")
    with pytest.raises(UserError, match="a Hugging Face dataset is a folder"):
        load_source(tmp_path / "nothing", fmt="hf")
    with pytest.raises(UserError, match="a split names part of a Hugging Face dataset folder"):
        load_source(EXAMPLES / "train.jsonl", split="test")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.jsonl").write_text("{oops\n")
    with pytest.raises(UserError, match="broken: cannot read its data files"):
        load_source(broken)
    with pytest.raises(UserError, match="is a directory; give the path of a .jsonl file"):
        load_source(broken, fmt="jsonl")


def test_hub_is_off_while_loading_and_only_then(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    folder = tmp_path / "ds"
    datasets.Dataset.from_list(QA).save_to_disk(str(folder))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    during, real = [], datasets.load_from_disk

    def spy(*args, **kwargs):
        during.append((os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_from_disk", spy)
    assert len(load_source(folder, columns=QA_COLUMNS)) == 6
    assert during == [("1", True, True)]
    assert (os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == (None, False, False)


def test_verl_example_is_what_its_script_writes_and_trains_as_arithmetic():
    verl = load_source(REPO / "examples" / "verl" / "train.parquet", require_reference=True)
    arithmetic = load_items(EXAMPLES / "train.jsonl")
    assert len(verl) == len(arithmetic) == 4000
    for i in (0, 1999, 3999):
        assert (verl[i].messages, verl[i].reference_answer) == (arithmetic[i].messages, arithmetic[i].reference_answer)
        assert verl[i].metadata["data_source"] == "arithmetic" and verl[i].id == str(i)
    check = subprocess.run([sys.executable, str(REPO / "scripts" / "make_verl_example.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_missing_optional_dependency_says_how_to_install(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "x.parquet", [verl_row(0)])
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import pyarrow.parquet -> ImportError
    with pytest.raises(UserError, match=r'pip install "rftkit\[data\]"'):
        load_source(path)


# ---- JSONL: a lazy sequence that gives load_items' Items ------------------------------------------------------


def test_lazy_jsonl_gives_load_items_items(tmp_path):
    for path in (EXAMPLES / "train.jsonl", EXAMPLES / "val.jsonl"):
        lazy = load_source(path)
        assert not isinstance(lazy, list) and list(lazy) == load_items(path)
    lines = ["\ufeff" + json.dumps({"messages": [user()], "reference_answer": "2"}),  # BOM, no id -> line-1
             "", json.dumps({"id": 7, "messages": [user("a")], "metadata": {"reference_answer": "1", "k": 1}}),
             "not json", json.dumps({"messages": [user("b")], "extra": [1, 2]}) + "\r"]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    lazy = load_source(path, skip_bad=True)
    assert list(lazy) == load_items(path, skip_bad=True)
    assert [i.id for i in lazy] == ["line-1", "7", "line-5"] and lazy[-1].metadata == {"extra": [1, 2]}
    assert pickle.loads(pickle.dumps(lazy))[1] == lazy[1]


def test_lazy_jsonl_fails_as_load_items_does(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "messages": [user()]}) + "\n{oops\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text("[1]\n")
    for path in (bad, empty, nothing, tmp_path / "missing.jsonl"):
        with pytest.raises(UserError) as want:
            load_items(path)
        with pytest.raises(UserError) as got:
            load_source(path)
        assert str(got.value) == str(want.value)


def test_lazy_jsonl_notices_a_file_changed_under_it(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"id": "a", "messages": [user("one")]}) + "\n")
    lazy = load_source(path)
    path.write_text(json.dumps({"id": "a", "messages": []}) + "\n")
    with pytest.raises(UserError, match="items.jsonl:1 no longer passes the check"):
        lazy[0]


def test_loaded_sequence_and_validation_keep_no_items(tmp_path):
    path = tmp_path / "many.jsonl"
    n = bench.write_items(path, 4_000_000)  # ~5k lines
    gc.collect()
    before = sum(type(o) is Item for o in gc.get_objects())
    lazy = load_source(path)
    report = validate_source(path)
    gc.collect()
    after = sum(type(o) is Item for o in gc.get_objects())
    assert len(lazy) == n == report.n_good and report.items == [] and report.ok
    assert after - before < 10, f"{after - before} Items alive after loading {n} lines"
    assert len(validate_file(path).items) == n  # the other callers still get every Item


def test_id_table_acts_as_the_dict_it_replaces():
    import random

    rng = random.Random(0)
    table, d = IdTable(capacity=8), {}
    for line in range(1, 20_000):
        item_id = f"id-{rng.randrange(12_000)}"
        assert (item_id in table) == (item_id in d)
        if item_id in d:
            assert table[item_id] == d[item_id]
        else:
            table[item_id] = d[item_id] = line
    assert table.size == len(d) and table.mask + 1 >= len(d)
    with pytest.raises(KeyError):
        table["never"]


# ---- rft data validate ----------------------------------------------------------------------------------------


def test_cli_validates_every_format(tmp_path):
    runner = CliRunner()
    path = write_parquet(tmp_path / "bad.parquet", BAD_ROWS[:3], row_group_size=2)
    result = runner.invoke(app, ["data", "validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:row 2: `prompt` must be" in result.output and f"{path}:row 3: messages[0]: empty content" in result.output
    qa = write_parquet(tmp_path / "qa.parquet", QA)
    result = runner.invoke(app, ["data", "validate", str(qa), "--columns", "prompt=question",
                                 "--columns", '{"reference_answer": "answer"}', "--require-reference"])
    assert result.exit_code == 0 and f"ok: 6 items in {qa}" in result.output
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(QA), "test": datasets.Dataset.from_list(QA[:1])}
                         ).save_to_disk(str(folder))
    result = runner.invoke(app, ["data", "validate", str(folder), "--split", "test", "--columns", "prompt=question"])
    assert result.exit_code == 0 and f"ok: 1 item in {folder}:test" in result.output
    result = runner.invoke(app, ["data", "validate", str(EXAMPLES / "train.jsonl"), "--format", "jsonl"])
    assert result.exit_code == 0 and "ok: 4000 items" in result.output


def test_validating_150mb_keeps_memory_far_below_the_file(tmp_path):
    """A memory bound, not a timing: `rft data validate` streams (docs/DATA.md, bench/data_validate.py)."""
    path = tmp_path / "large.jsonl"
    bench.write_items(path, 150_000_000)
    result = bench.validate_peak(path)
    assert result["rc"] == 0, result["output"]
    assert result["peak_rss_mb"] < 250, f"peak RSS {result['peak_rss_mb']:.0f} MB validating a 150 MB file"
