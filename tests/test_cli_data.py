"""In-process tests of `pplug score`, `pplug tasks` and `pplug data synth|validate|stats`."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from cli_helpers import run

HAS_SYNTH = importlib.util.find_spec("pplug.synth") is not None
PAPER = "Generate a title for the following abstract of a paper: "
NEWS_LABELS = ("politics, entertainment, world news, u.s. news, comedy, black voices, media, queer voices, crime, "
               "sports, women, weird news, style & beauty, home & living, wellness")



def dump(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def outputs(task: str, pairs: dict[str, str]) -> dict:
    return {"task": task, "golds": [{"id": k, "output": v} for k, v in pairs.items()]}


def paper_folder(folder: Path, splits=("train", "dev"), test_without_outputs: bool = True) -> Path:
    """A tiny valid LaMP-5-shaped folder (name it scholarly_title or pass --task)."""
    for s in splits:
        qs = [{"id": f"{s}{i}", "input": PAPER + f"we study topic {i} in depth",
               "profile": [{"id": f"{s}{i}-{j}", "title": f"Topic {j} study", "abstract": f"we study topic {j}"}
                           for j in range(3)]} for i in range(3)]
        dump(folder / f"{s}_questions.json", qs)
        dump(folder / f"{s}_outputs.json", outputs("LaMP_5", {q["id"]: f"Topic {i} study" for i, q in
                                                               enumerate(qs)}))
    if test_without_outputs:
        dump(folder / "test_questions.json", [{"id": "t0", "input": PAPER + "x", "profile": []}])
    return folder


def news_folder(folder: Path) -> Path:
    """A tiny valid news_categorize folder (classification)."""
    for s, cats in (("train", ["politics", "politics", "sports"]), ("dev", ["politics", "crime"])):
        qs = [{"id": f"{s}{i}", "user_id": f"u{i % 2}",
               "input": f"Which category ...? categories: [{NEWS_LABELS}] article: Title {i}. Text {i}.",
               "profile": [{"id": "h", "title": "Old", "text": "old", "category": "politics"}]}
              for i in range(len(cats))]
        dump(folder / f"{s}_questions.json", qs)
        dump(folder / f"{s}_outputs.json", outputs("LaMP_2N", {q["id"]: c for q, c in zip(qs, cats, strict=True)}))
    return folder


# ---------------------------------------------------------------------------------------------- pplug score


def test_score_classification(tmp_path, capsys):
    golds = dump(tmp_path / "g.json", outputs("LaMP_2N", {"a": "politics", "b": "sports", "c": "crime"}))
    preds = dump(tmp_path / "p.json", outputs("LaMP_2N", {"c": "crime", "a": "politics", "b": "politics"}))
    assert run(["score", "--task", "news_categorize", "--golds", str(golds), "--preds", str(preds)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"accuracy", "f1"}
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert 0 < result["f1"] < 1


def test_score_generation(tmp_path, capsys):
    golds = dump(tmp_path / "g.json", outputs("LaMP_5", {"1": "deep cats", "2": "quantum dogs"}))
    preds = dump(tmp_path / "p.json", outputs("LaMP_5", {"1": "deep cats", "2": "quantum dogs"}))
    assert run(["score", "--task", "LaMP_5", "--golds", str(golds), "--preds", str(preds)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"rouge-1": pytest.approx(1.0), "rouge-L": pytest.approx(1.0)}


def test_score_rating(tmp_path, capsys):
    golds = dump(tmp_path / "g.json", outputs("LaMP_3", {"1": "5", "2": "1"}))
    preds = dump(tmp_path / "p.json", outputs("LaMP_3", {"1": "4", "2": "1"}))
    assert run(["score", "--task", "LaMP-3", "--golds", str(golds), "--preds", str(preds)]) == 0
    assert json.loads(capsys.readouterr().out)["mae"] == pytest.approx(0.5)


@pytest.mark.parametrize(("pred_ids", "fragment"), [(["a"], "'b'"), (["a", "b", "zz"], "'zz'"),
                                                    (["a", "zz"], "'zz'")])
def test_score_mismatched_ids(tmp_path, capsys, pred_ids, fragment):
    golds = dump(tmp_path / "g.json", outputs("LaMP_5", {"a": "x", "b": "y"}))
    preds = dump(tmp_path / "p.json", outputs("LaMP_5", {i: "x" for i in pred_ids}))
    assert run(["score", "--task", "LaMP-5", "--golds", str(golds), "--preds", str(preds)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and "id sets differ" in captured.err and fragment in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("problem", ["missing-file", "bad-json", "unknown-task", "gold-not-label"])
def test_score_user_errors_exit_2(tmp_path, capsys, problem):
    golds = dump(tmp_path / "g.json", outputs("LaMP_2N", {"a": "politics"}))
    preds = dump(tmp_path / "p.json", outputs("LaMP_2N", {"a": "politics"}))
    task = "news_categorize"
    if problem == "missing-file":
        preds = tmp_path / "nope.json"
    elif problem == "bad-json":
        preds.write_text("{\n", encoding="utf-8")
    elif problem == "unknown-task":
        task = "LaMP-99"
    else:
        dump(golds, outputs("LaMP_2N", {"a": "Politics"}))
    assert run(["score", "--task", task, "--golds", str(golds), "--preds", str(preds)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    expected = {"missing-file": "nope.json", "bad-json": "invalid JSON", "unknown-task": "unknown task 'LaMP-99'",
                "gold-not-label": "'Politics'"}[problem]
    assert expected in err


# ------------------------------------------------------------------------------------------ pplug data validate


def test_validate_valid_folder(tmp_path, capsys):
    folder = paper_folder(tmp_path / "scholarly_title")
    assert run(["data", "validate", str(folder)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["task"] == "scholarly_title" and report["folder"] == str(folder)
    assert report["splits"] == {
        "train": {"questions": 3, "golds": 3, "profile_items": 9},
        "dev": {"questions": 3, "golds": 3, "profile_items": 9},
        "test": {"questions": 1, "golds": None, "profile_items": 0},
    }


def test_validate_with_explicit_task_and_parent_folder(tmp_path, capsys):
    paper_folder(tmp_path / "parent" / "anon")
    news_folder(tmp_path / "parent" / "news_categorize")
    (tmp_path / "parent" / "empty").mkdir()
    assert run(["data", "validate", str(tmp_path / "parent" / "anon"), "--task", "LaMP-5"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "LaMP-5"
    # a parent folder validates each task subfolder (task from the outputs' task field)
    assert run(["data", "validate", str(tmp_path / "parent")]) == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [(r["task"], r["ok"]) for r in lines] == [("LaMP-5", True), ("news_categorize", True)]


@pytest.mark.parametrize(
    ("corrupt", "fragments"),
    [
        ("drop-input", ["train_questions.json", "record 1", "field 'input'", "missing field"]),
        ("drop-title", ["dev_questions.json", "record 2", "field 'profile[1].title'"]),
        ("profile-dict", ["train_questions.json", "record 0", "field 'profile'", "expected list, got dict"]),
        ("bad-json", ["dev_outputs.json", "invalid JSON", "line 1, column"]),
        ("orphan-gold", ["train_outputs.json", "field 'golds.id'", "'ghost'"]),
    ],
)
def test_validate_corrupted_copy(tmp_path, capsys, corrupt, fragments):
    folder = shutil.copytree(paper_folder(tmp_path / "orig"), tmp_path / "scholarly_title")
    if corrupt in ("drop-input", "profile-dict"):
        qs = json.loads((folder / "train_questions.json").read_text())
        if corrupt == "drop-input":
            del qs[1]["input"]
        else:
            qs[0]["profile"] = {"id": "p"}
        dump(folder / "train_questions.json", qs)
    elif corrupt == "drop-title":
        qs = json.loads((folder / "dev_questions.json").read_text())
        del qs[2]["profile"][1]["title"]
        dump(folder / "dev_questions.json", qs)
    elif corrupt == "bad-json":
        (folder / "dev_outputs.json").write_text('{"task": "LaMP_5", "golds": [}', encoding="utf-8")
    else:
        out = json.loads((folder / "train_outputs.json").read_text())
        out["golds"].append({"id": "ghost", "output": "boo"})
        dump(folder / "train_outputs.json", out)
    assert run(["data", "validate", str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "Traceback" not in captured.err
    assert captured.err.count("\n") == 1  # one line
    for frag in fragments:
        assert frag in captured.err, captured.err
    assert '"ok": true' not in captured.out


def test_validate_labels_listed_in_input_must_match_task(tmp_path, capsys):
    folder = news_folder(tmp_path / "news_categorize")
    qs = json.loads((folder / "dev_questions.json").read_text())
    qs[1]["input"] = "categories: [politics, sports] article: T. X."
    dump(folder / "dev_questions.json", qs)
    assert run(["data", "validate", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "dev_questions.json, record 1, field 'input'" in err and "lists labels" in err


def test_validate_missing_folder_and_no_splits(tmp_path, capsys):
    assert run(["data", "validate", str(tmp_path / "nope")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run(["data", "validate", str(tmp_path / "empty")]) == 2
    assert "no train/dev/test split files" in capsys.readouterr().err


def test_validate_cannot_tell_task(tmp_path, capsys):
    folder = tmp_path / "anon"
    dump(folder / "test_questions.json", [{"id": "t0", "input": "x", "profile": []}])
    assert run(["data", "validate", str(folder)]) == 2
    assert "--task" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- pplug data stats


def test_stats_generation(tmp_path, capsys):
    folder = paper_folder(tmp_path / "scholarly_title")
    assert run(["data", "stats", str(folder)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "scholarly_title" and report["kind"] == "generation"
    dev = report["splits"]["dev"]
    assert (dev["questions"], dev["users"], dev["profile_median"], dev["profile_max"]) == (3, 3, 3, 3)
    assert dev["output_words_mean"] == 3
    heur = dev["heuristics"]["user-nearest-item"]
    assert heur["rouge-1"] == pytest.approx(1.0)  # the nearest item's title is the gold here
    assert "heuristics" not in report["splits"]["test"] and report["splits"]["test"]["profile_max"] == 0


def test_stats_classification(tmp_path, capsys):
    folder = news_folder(tmp_path / "news_categorize")
    assert run(["data", "stats", str(folder)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "classification"
    dev = report["splits"]["dev"]
    assert dev["users"] == 2 and dev["outputs"] == {"politics": 1, "crime": 1}
    assert set(dev["heuristics"]) == {"global-majority", "user-majority"}
    assert dev["heuristics"]["global-majority"]["accuracy"] == pytest.approx(0.5)
    assert report["splits"]["train"]["outputs"] == {"politics": 2, "sports": 1}


def test_stats_error_exits_2(tmp_path, capsys):
    folder = paper_folder(tmp_path / "scholarly_title")
    (folder / "train_questions.json").write_text("[", encoding="utf-8")
    assert run(["data", "stats", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "train_questions.json" in err and "invalid JSON" in err


def test_stats_empty_split_no_traceback(tmp_path, capsys):
    folder = paper_folder(tmp_path / "scholarly_title")
    dump(folder / "dev_questions.json", [])
    dump(folder / "dev_outputs.json", outputs("LaMP_5", {}))
    assert run(["data", "validate", str(folder)]) == 0  # the loader accepts an empty split
    capsys.readouterr()
    assert run(["data", "stats", str(folder)]) in (0, 2)  # any other exception propagates and fails


# ---------------------------------------------------------------------------------------------- pplug data synth


@pytest.mark.skipif(not HAS_SYNTH, reason="pplug.synth not available")
def test_synth_then_validate_and_stats(tmp_path, capsys):
    out = tmp_path / "synth"
    assert run(["data", "synth", "--out", str(out), "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(ln.split(":")[0] for ln in lines) == ["synth_title", "synth_topic"]
    assert run(["data", "validate", str(out)]) == 0
    reports = {r["task"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(reports) == {"synth_title", "synth_topic"}
    for r in reports.values():
        assert r["ok"] is True and set(r["splits"]) == {"train", "dev", "test"}
        assert all(c["questions"] > 0 and c["golds"] == c["questions"] for c in r["splits"].values())
    assert run(["data", "validate", str(out / "synth_topic")]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "synth_topic"
    assert run(["data", "stats", str(out / "synth_topic")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["splits"]["dev"]["heuristics"]) == {"global-majority", "user-majority"}


# --------------------------------------------------------------------------------------------- tasks and help


def test_tasks_lists_registered(capsys):
    assert run(["tasks"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln.strip()}
    assert rows["LaMP-5"] == "generation" and rows["news_categorize"] == "classification"
    assert rows["LaMP-3"] == "rating"
    assert {"LaMP-1", "LaMP-2N", "LaMP-7", "scholarly_title", "synth_topic", "synth_title"} <= set(rows)


@pytest.mark.parametrize("argv", [["--help"], ["score", "--help"], ["tasks", "--help"], ["data", "--help"],
                                  ["data", "synth", "--help"], ["data", "validate", "--help"],
                                  ["data", "stats", "--help"]])
def test_help_exits_0(capsys, argv):
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert "Usage" in out


@pytest.mark.parametrize("argv", [["score", "--task", "LaMP-5"], ["data", "nope"], ["data", "synth"],
                                  ["tasks", "--bogus"]], ids=["missing-option", "unknown-command",
                                                              "missing-out", "unknown-option"])
def test_usage_errors_exit_2(capsys, argv):
    assert run(argv) == 2  # any non-SystemExit exception propagates and fails the test
    assert "Traceback" not in capsys.readouterr().err
