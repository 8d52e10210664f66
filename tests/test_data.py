"""Tests for pplug.data: LaMP and custom JSONL loaders, their error messages, and the prediction writer.

Every fixture is a tiny folder written under tmp_path; nothing reads real data.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pplug.data import (
    HistoryItem,
    Question,
    Split,
    available_splits,
    load_split,
    resolve_task,
    validate_split,
    write_lamp_split,
    write_predictions,
)
from pplug.data._json import read_json
from pplug.data.lamp import parse_outputs
from pplug.errors import DataError, PPlugError

PAPER = "Generate a title for the following abstract of a paper: "


def paper_item(i: int, **extra) -> dict:
    return {"id": f"p{i}", "title": f"Title {i}", "abstract": f"abstract number {i}", **extra}


def paper_question(qid: str, n_items: int = 2, **extra) -> dict:
    return {"id": qid, "input": PAPER + f"we study {qid}", "profile": [paper_item(j) for j in range(n_items)],
            **extra}


def write_json(path: Path, obj, gz: bool = False) -> Path:
    text = json.dumps(obj)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def make_lamp(folder: Path, split: str = "train", questions: list | None = None, golds: list | dict | None = None,
              task_field: str = "LaMP_5", gz: bool = False, outputs: bool = True) -> Path:
    """Write one LaMP split; golds default to one 'T <id>' per question."""
    folder.mkdir(parents=True, exist_ok=True)
    if questions is None:
        questions = [paper_question("q1"), paper_question("q2", user_id="alice")]
    write_json(folder / f"{split}_questions.json", questions, gz)
    if outputs:
        if golds is None:
            golds = [{"id": q["id"], "output": f"T {q['id']}"} for q in questions]
        payload = golds if isinstance(golds, dict) else {"task": task_field, "golds": golds}
        write_json(folder / f"{split}_outputs.json", payload, gz)
    return folder


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    lines = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def jsonl_row(qid: str | None = "r1", user: str = "alice", output: str | None = "My Title", **extra) -> dict:
    row: dict = {"user_id": user, "input": PAPER + "we study llamas",
                 "history": [{"id": "h1", "date": "2021-03-01", "title": "Old", "abstract": "old abstract"}]}
    if qid is not None:
        row["id"] = qid
    if output is not None:
        row["output"] = output
    row.update(extra)
    return row


def load_error(folder: Path, split: str = "train", task: str | None = "LaMP-5") -> str:
    with pytest.raises(DataError) as info:
        load_split(folder, split, task)
    return str(info.value)


# --------------------------------------------------------------------------------------------- LaMP loading


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_lamp_valid_folder_loads(tmp_path, gz):
    folder = make_lamp(tmp_path / "d", gz=gz)
    split = load_split(folder, "train", "LaMP-5")
    assert split.task == "LaMP-5" and split.name == "train" and len(split) == 2
    q1, q2 = split.questions
    assert q1.id == "q1" and q1.input.startswith(PAPER)
    assert [it.id for it in q1.profile] == ["p0", "p1"]
    assert q1.profile[0].fields == {"title": "Title 0", "abstract": "abstract number 0"}
    assert q1.profile[0].date is None
    assert split.golds == {"q1": "T q1", "q2": "T q2"}
    assert split.gold(q2) == "T q2"
    assert split.source.endswith("train_questions.json.gz" if gz else "train_questions.json")


def test_lamp_user_id_optional(tmp_path):
    split = load_split(make_lamp(tmp_path / "d"), "train", "LaMP-5")
    q1, q2 = split.questions
    assert q1.user_id is None and q1.user_key == "q:q1"  # one LaMP question = one user
    assert q2.user_id == "alice" and q2.user_key == "alice"
    assert "user_id" not in q1.to_json() and q2.to_json()["user_id"] == "alice"


def test_lamp_ids_and_dates_are_strings(tmp_path):
    q = {"id": 7, "input": PAPER + "x", "user_id": 3,
         "profile": [{"id": 11, "title": "t", "abstract": "a", "date": 2019}]}
    folder = make_lamp(tmp_path / "d", questions=[q], golds=[{"id": 7, "output": 42}])
    split = load_split(folder, "train", "LaMP-5")
    (question,) = split.questions
    assert question.id == "7" and question.user_id == "3"
    assert question.profile[0] == HistoryItem("11", {"title": "t", "abstract": "a"}, "2019")
    assert split.golds == {"7": "42"}


def test_test_split_without_outputs_has_no_golds(tmp_path):
    folder = make_lamp(tmp_path / "d", split="test", outputs=False)
    split = load_split(folder, "test", "LaMP-5")
    assert split.golds is None and len(split) == 2
    with pytest.raises(KeyError, match="no gold outputs"):
        split.gold(split.questions[0])


def test_gzip_outputs_with_plain_questions(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    qs = [paper_question("q1")]
    write_json(folder / "dev_questions.json", qs)
    write_json(folder / "dev_outputs.json", {"task": "LaMP_5", "golds": [{"id": "q1", "output": "x"}]}, gz=True)
    assert load_split(folder, "dev", "LaMP-5").golds == {"q1": "x"}


def test_available_splits_and_missing_split(tmp_path):
    folder = make_lamp(tmp_path / "d", "train")
    make_lamp(folder, "test", outputs=False, gz=True)
    write_jsonl(folder / "dev.jsonl", [jsonl_row()])
    assert available_splits(folder) == ["train", "dev", "test"]
    only = make_lamp(tmp_path / "only", "train")
    assert available_splits(only) == ["train"]
    msg = load_error(only, "dev")
    assert "dev_questions.json" in msg and "no 'dev' split" in msg


def test_missing_folder(tmp_path):
    msg = load_error(tmp_path / "nope")
    assert "nope" in msg and "not found" in msg


# ------------------------------------------------------------------------------------------- task resolution


def test_resolve_task_explicit_folder_name_and_outputs_field(tmp_path):
    anon = make_lamp(tmp_path / "anon", task_field="LaMP_5")
    assert resolve_task(anon, "lamp_5") == "LaMP-5"
    assert resolve_task(anon) == "LaMP-5"  # from the outputs' task field
    assert load_split(anon, "train").task == "LaMP-5"
    named = make_lamp(tmp_path / "scholarly_title", task_field="whatever")
    assert resolve_task(named) == "scholarly_title"  # folder name wins over the outputs field
    assert resolve_task(make_lamp(tmp_path / "LaMP_5", outputs=False)) == "LaMP-5"


def test_resolve_task_failures(tmp_path):
    no_outputs = make_lamp(tmp_path / "anon", split="test", outputs=False)
    with pytest.raises(DataError, match="--task"):
        resolve_task(no_outputs)
    unknown = make_lamp(tmp_path / "anon2", task_field="LaMP_99")
    assert resolve_task(unknown) == "anon2"  # an unknown task field is only a hint: the task is inferred
    with pytest.raises(PPlugError, match="unknown task 'nope'"):
        resolve_task(no_outputs, "nope")


# ------------------------------------------------------------------------------------------ custom JSONL


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_jsonl_valid(tmp_path, gz):
    folder = tmp_path / "d"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [jsonl_row("a", "alice", "Title A"), "", jsonl_row(None, 5, "Title B")],
                gz=gz)
    split = load_split(folder, "train", "LaMP-5")
    assert split.task == "LaMP-5" and len(split) == 2
    a, b = split.questions
    assert (a.id, a.user_id, a.user_key) == ("a", "alice", "alice")
    assert (b.id, b.user_id) == ("train-3", "5")  # default id from the line number; blank lines skipped
    assert a.profile == [HistoryItem("h1", {"title": "Old", "abstract": "old abstract"}, "2021-03-01")]
    assert split.golds == {"a": "Title A", "train-3": "Title B"}


def test_jsonl_without_outputs_has_no_golds(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    write_jsonl(folder / "test.jsonl", [jsonl_row("a", output=None), jsonl_row("b", output=None)])
    split = load_split(folder, "test", "LaMP-5")
    assert split.golds is None and [q.id for q in split.questions] == ["a", "b"]


@pytest.mark.parametrize(
    ("rows", "fragments"),
    [
        ([jsonl_row("a"), {"id": "b", "user_id": "u", "history": []}], ["record 2", "field 'input'", "missing"]),
        ([{"id": "a", "input": "x", "history": []}], ["record 1", "field 'user_id'"]),
        ([jsonl_row("a", history={"id": "h"})], ["record 1", "field 'history'", "expected list, got dict"]),
        ([jsonl_row("a", input=3)], ["record 1", "field 'input'", "expected str, got int"]),
        ([jsonl_row("a"), jsonl_row("a")], ["record 2", "field 'id'", "duplicate id 'a'"]),
        ([jsonl_row("a"), jsonl_row("b", output=None)], ["record 2", "field 'output'", "missing"]),
        ([jsonl_row("a", history=[{"title": "t", "abstract": "a"}])], ["record 1", "field 'history[0].id'"]),
        ([jsonl_row("a"), '{"id": "b", "user_id": '], ["record 2", "invalid JSON", "line 2"]),
        (["[1, 2]"], ["record 1", "expected an object, got list"]),
    ],
    ids=["missing-input", "missing-user", "history-dict", "input-number", "dup-id", "missing-output",
         "item-id", "bad-json", "not-object"],
)
def test_jsonl_errors_name_file_line_field(tmp_path, rows, fragments):
    folder = tmp_path / "d"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows)
    msg = load_error(folder)
    assert "train.jsonl" in msg
    for frag in fragments:
        assert frag in msg, msg


def test_jsonl_empty_file(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n\n", encoding="utf-8")
    assert "no examples" in load_error(folder)


def test_jsonl_missing_task_field_names_line_and_history(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [jsonl_row("a", history=[{"id": "h1", "abstract": "no title"}])])
    msg = load_error(folder)
    assert "train.jsonl" in msg and "field 'history[0].title'" in msg and "record 1" in msg, msg


# --------------------------------------------------------------------------------------- LaMP loader errors


def _q(**over) -> dict:
    q = paper_question("q1")
    q.update(over)
    return q


@pytest.mark.parametrize(
    ("questions", "fragments"),
    [
        ([paper_question("q0"), {k: v for k, v in _q().items() if k != "input"}],
         ["record 1", "field 'input'", "missing field"]),
        ([{k: v for k, v in _q().items() if k != "profile"}], ["record 0", "field 'profile'", "missing field"]),
        ([{k: v for k, v in _q().items() if k != "id"}], ["record 0", "field 'id'", "missing field"]),
        ([_q(profile=[paper_item(0), {"title": "t", "abstract": "a"}])],
         ["record 0", "field 'profile[1].id'", "missing field"]),
        ([_q(input=3)], ["record 0", "field 'input'", "expected str, got int"]),
        ([_q(input=True)], ["record 0", "field 'input'", "expected str, got bool"]),
        ([_q(profile={"id": "p"})], ["record 0", "field 'profile'", "expected list, got dict"]),
        ([_q(profile=["just text"])], ["record 0", "field 'profile[0]'", "expected an object, got str"]),
        ([_q(profile=[paper_item(0, date=["2020"])])], ["record 0", "field 'profile[0].date'"]),
        ([_q(user_id=[1])], ["record 0", "field 'user_id'"]),
        (["q1"], ["record 0", "expected an object, got str"]),
    ],
    ids=["no-input", "no-profile", "no-id", "no-item-id", "input-number", "input-bool", "profile-dict",
         "item-not-object", "bad-date", "bad-user-id", "record-not-object"],
)
def test_lamp_question_errors_name_file_record_field(tmp_path, questions, fragments):
    folder = make_lamp(tmp_path / "d", questions=questions, outputs=False)
    msg = load_error(folder)
    assert "train_questions.json" in msg
    for frag in fragments:
        assert frag in msg, msg


def test_missing_task_field_of_profile_item(tmp_path):
    bad_item = {"id": "p9", "abstract": "no title here"}
    folder = make_lamp(tmp_path / "d", questions=[paper_question("q0"), _q(profile=[paper_item(0), bad_item])])
    msg = load_error(folder)
    assert "train_questions.json" in msg and "record 1" in msg and "field 'profile[1].title'" in msg, msg
    assert "LaMP-5" in msg


def test_task_fields_depend_on_task(tmp_path):
    """LaMP-7 items only need 'text': the paper items lack it, LaMP-5 items are fine."""
    folder = make_lamp(tmp_path / "d")
    load_split(folder, "train", "LaMP-5")
    assert "field 'profile[0].text'" in load_error(folder, task="LaMP-7")


def test_duplicate_question_id(tmp_path):
    folder = make_lamp(tmp_path / "d", questions=[paper_question("a"), paper_question("b"), paper_question("a")],
                       outputs=False)
    msg = load_error(folder)
    assert "train_questions.json, record 2, field 'id'" in msg and "duplicate id 'a'" in msg
    assert "first at record 0" in msg


def test_duplicate_gold_id(tmp_path):
    golds = [{"id": "q1", "output": "x"}, {"id": "q1", "output": "y"}]
    msg = load_error(make_lamp(tmp_path / "d", questions=[paper_question("q1")], golds=golds))
    assert "train_outputs.json, record 1, field 'golds.id'" in msg and "duplicate gold id 'q1'" in msg


def test_question_without_gold(tmp_path):
    qs = [paper_question("q1"), paper_question("q2")]
    msg = load_error(make_lamp(tmp_path / "d", questions=qs, golds=[{"id": "q1", "output": "x"}]))
    assert "train_questions.json, record 1, field 'id'" in msg
    assert "question 'q2' has no gold output" in msg and "train_outputs.json" in msg


def test_gold_without_question_names_file_field_and_id(tmp_path):
    golds = [{"id": "q1", "output": "x"}, {"id": "ghost", "output": "y"}]
    msg = load_error(make_lamp(tmp_path / "d", questions=[paper_question("q1")], golds=golds))
    assert msg.startswith(str(tmp_path / "d" / "train_outputs.json"))
    assert "field 'golds.id'" in msg and "gold 'ghost' has no question" in msg


def test_gold_without_question_names_record(tmp_path):
    golds = [{"id": "q1", "output": "x"}, {"id": "ghost", "output": "y"}]
    msg = load_error(make_lamp(tmp_path / "d", questions=[paper_question("q1")], golds=golds))
    assert "record 1" in msg, msg


@pytest.mark.parametrize(
    ("golds", "fragments"),
    [
        ({"task": "LaMP_5"}, ["field 'golds'", "missing field"]),
        ([{"id": "q1", "output": "x"}, {"id": "q2"}], ["record 1", "field 'golds.output'", "missing"]),
        ([{"output": "x"}], ["record 0", "field 'golds.id'", "missing"]),
        ([{"id": "q1", "output": None}], ["record 0", "field 'golds.output'", "got NoneType"]),
        ({"task": 5, "golds": []}, ["field 'task'", "expected str, got int"]),
        ([{"id": "q1", "output": "x"}], None),  # control: valid
    ],
    ids=["no-golds", "no-output", "no-id", "null-output", "task-number", "valid"],
)
def test_outputs_file_errors(tmp_path, golds, fragments):
    qs = [paper_question("q1")] + ([paper_question("q2")] if isinstance(golds, list) and len(golds) == 2 else [])
    folder = make_lamp(tmp_path / "d", questions=qs, golds=golds)
    if fragments is None:
        load_split(folder, "train", "LaMP-5")
        return
    msg = load_error(folder)
    assert "train_outputs.json" in msg
    for frag in fragments:
        assert frag in msg, msg


@pytest.mark.parametrize("which", ["questions", "outputs"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_invalid_json_names_file_line_column(tmp_path, which, gz):
    folder = make_lamp(tmp_path / "d", gz=gz)
    bad = '[\n {"id": "q1",\n  "input": }\n]' if which == "questions" else '{"task": "LaMP_5",\n "golds": [,]}'
    suffix = ".gz" if gz else ""
    path = folder / f"train_{which}.json{suffix}"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(bad)
    else:
        path.write_text(bad, encoding="utf-8")
    msg = load_error(folder)
    assert str(path) in msg and "invalid JSON" in msg
    assert ("line 3, column 12" if which == "questions" else "line 2, column 12") in msg, msg


def test_unreadable_gzip(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "train_questions.json.gz").write_bytes(b"not gzip at all")
    msg = load_error(folder)
    assert "train_questions.json.gz" in msg and "cannot read" in msg


def test_questions_file_not_a_list(tmp_path):
    folder = make_lamp(tmp_path / "d", outputs=False)
    write_json(folder / "train_questions.json", {"questions": []})
    msg = load_error(folder)
    assert "train_questions.json" in msg and "expected a JSON list of questions, got dict" in msg


NEWS = ", ".join(("politics", "entertainment", "world news", "u.s. news", "comedy", "black voices", "media",
                  "queer voices", "crime", "sports", "women", "weird news", "style & beauty", "home & living",
                  "wellness"))


def _category_question(qid: str, labels: str = NEWS) -> dict:
    text = (f"Which category does this article relate to among the following categories? categories: [{labels}] "
            f"article: A title. Some text about {qid}.")
    return {"id": qid, "input": text,
            "profile": [{"id": "p1", "title": "Old", "text": "old text", "category": "politics"}]}


def test_classification_gold_not_in_labels(tmp_path):
    qs = [_category_question("a"), _category_question("b")]
    golds = [{"id": "a", "output": "politics"}, {"id": "b", "output": "Politics"}]
    folder = make_lamp(tmp_path / "news_categorize", questions=qs, golds=golds, task_field="LaMP_2N")
    msg = load_error(folder, task=None)
    assert "record 1" in msg and "'Politics' is not one of the task's labels" in msg and "question 'b'" in msg
    # the same gold is valid for a generation task, and a valid gold loads
    load_split(folder, "train", "news_headline")
    golds[1]["output"] = " politics "
    write_json(folder / "train_outputs.json", {"task": "LaMP_2N", "golds": golds})
    assert load_split(folder, "train").task == "news_categorize"


def test_classification_gold_error_names_outputs_file(tmp_path):
    golds = [{"id": "a", "output": "not-a-label"}]
    folder = make_lamp(tmp_path / "news_categorize", questions=[_category_question("a")], golds=golds)
    msg = load_error(folder, task=None)
    assert msg.startswith(str(folder / "train_outputs.json")), msg


def test_rating_gold_must_be_number(tmp_path):
    q = {"id": "r1", "input": "What is the score of the following review? review: great",
         "profile": [{"id": "p", "text": "meh", "score": "3"}]}
    folder = make_lamp(tmp_path / "d", questions=[q], golds=[{"id": "r1", "output": "five"}])
    msg = load_error(folder, task="LaMP-3")
    assert "record 0" in msg and "'five' is not a number" in msg
    write_json(folder / "train_outputs.json", {"task": "LaMP_3", "golds": [{"id": "r1", "output": 4}]})
    assert load_split(folder, "train", "LaMP-3").golds == {"r1": "4"}


# ------------------------------------------------------------------------------ writing, validate_split, limit


def test_write_predictions_round_trip(tmp_path):
    preds = [{"id": "q1", "output": "Über Titel"}, {"id": "q2", "output": "second \"quoted\""}]
    path = write_predictions(tmp_path / "new" / "sub" / "preds.json", "LaMP_5", preds)
    assert path == tmp_path / "new" / "sub" / "preds.json" and path.is_file()
    raw = read_json(path)
    assert raw == {"task": "LaMP_5", "golds": preds}
    assert "Über" in path.read_text(encoding="utf-8")  # not ASCII-escaped
    assert parse_outputs(raw, path) == ("LaMP_5", {"q1": "Über Titel", "q2": "second \"quoted\""})


def test_write_lamp_split_round_trip(tmp_path):
    original = load_split(make_lamp(tmp_path / "src"), "train", "LaMP-5")
    original.questions[0].profile[0] = HistoryItem("p0", {"title": "T", "abstract": "A"}, "2020-05-01")
    out = tmp_path / "out"
    write_lamp_split(out, original, "LaMP_5")
    again = load_split(out, "train")  # task from the written outputs field
    assert again.task == "LaMP-5"
    assert [q.to_json() for q in again.questions] == [q.to_json() for q in original.questions]
    assert again.golds == original.golds
    test = Split("LaMP-5", "test", original.questions, None)
    write_lamp_split(out, test, "LaMP_5")
    assert not (out / "test_outputs.json").exists()
    assert load_split(out, "test").golds is None


def test_validate_split_on_in_memory_split():
    item = HistoryItem("h", {"title": "t", "abstract": "a"})
    ok = Split("LaMP-5", "dev", [Question("1", PAPER + "x", [item])], {"1": "T"}, "mem")
    validate_split(ok)
    bad = Split("LaMP-5", "dev", [Question("1", "x", [HistoryItem("h", {"title": "t"})])], None, "mem")
    with pytest.raises(DataError, match=r"mem, record 0, field 'profile\[0\]\.abstract'"):
        validate_split(bad)


def test_split_limit(tmp_path):
    qs = [paper_question(f"q{i}") for i in range(4)]
    split = load_split(make_lamp(tmp_path / "d", questions=qs), "train", "LaMP-5")
    split.meta["k"] = 1
    two = split.limit(2)
    assert [q.id for q in two.questions] == ["q0", "q1"] and two.golds == {"q0": "T q0", "q1": "T q1"}
    assert (two.task, two.name, two.source, two.meta) == (split.task, split.name, split.source, {"k": 1})
    two.meta["k"] = 2
    assert split.meta["k"] == 1 and len(split) == 4  # the original is untouched
    assert split.limit(None) is split and split.limit(4) is split and split.limit(10) is split
    zero = split.limit(0)
    assert len(zero) == 0 and zero.golds == {}
    no_golds = Split("LaMP-5", "test", split.questions, None)
    assert no_golds.limit(1).golds is None and len(no_golds.limit(1)) == 1
