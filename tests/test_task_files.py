"""A task from its data: task files, inference, resolution by content, per-question labels, and every command
on a task the registry has never seen (tiny models, tiny folders made here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cli_helpers import run
from pplug import tasks as tasks_mod
from pplug.errors import PPlugError
from pplug.task_resolve import resolve, resolve_without_file, same_task
from pplug.tasks import Task, get_task, has_task

TAGS = ["thriller", "memoir", "poetry", "cookbook"]
NEWS = ["politics", "entertainment", "world news", "u.s. news", "comedy", "black voices", "media", "queer voices",
        "crime", "sports", "women", "weird news", "style & beauty", "home & living", "wellness"]


@pytest.fixture(autouse=True)
def scratch_registry(monkeypatch, tmp_path):
    """Tasks defined in a test never leak into others; embeddings are cached under tmp_path."""
    monkeypatch.setattr(tasks_mod, "_REGISTRY", dict(tasks_mod._REGISTRY))
    monkeypatch.setattr(tasks_mod, "_DEFINED", set(tasks_mod._DEFINED))
    monkeypatch.setenv("PPLUG_CACHE", str(tmp_path / "cache"))



def cli_json(argv: list[str], capsys) -> dict:
    """Run a command that must succeed and parse the JSON it prints."""
    capsys.readouterr()
    assert run(argv) == 0
    return json.loads(capsys.readouterr().out)


def dump(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def lamp_folder(folder: Path, task_field: str, make_q, n=(6, 3, 3)) -> Path:
    """A LaMP folder: make_q(split, i) -> (question, gold)."""
    for split, count in zip(("train", "dev", "test"), n, strict=True):
        pairs = [make_q(split, i) for i in range(count)]
        dump(folder / f"{split}_questions.json", [q for q, _ in pairs])
        dump(folder / f"{split}_outputs.json",
             {"task": task_field, "golds": [{"id": q["id"], "output": g} for q, g in pairs]})
    return folder


def book_q(split: str, i: int, labels=TAGS):
    """Book tagging: the input lists the tags (a label set the registry has never seen)."""
    profile = [{"id": f"{split}{i}-{j}", "description": f"a story about the cat {j}", "tag": TAGS[(i + j) % 4],
                "date": f"2020-01-0{j + 1}"} for j in range(3)]
    text = (f"Which tag does this book relate to? Just answer with the tag. tags: [{', '.join(labels)}] "
            f"book: the dog ran in the park {i}")
    return {"id": f"{split}{i}", "user_id": f"u{i % 3}", "input": text, "profile": profile}, TAGS[i % 4]


def books(folder: Path, task_file: dict | None = None) -> Path:
    lamp_folder(folder, "LaMP_2", book_q)  # the outputs say LaMP_2 (movie tags): only a hint
    if task_file is not None:
        dump(folder / "task.json", task_file)
    return folder


def tiny_sets(llama: Path, bert: Path) -> list[str]:
    return [f"backbone.name_or_path={llama}", f"encoder.name_or_path={bert}", "train.max_steps=1",
            "train.augment_copies=0", "train.progress=false", "decode.max_new_tokens=3", "train.dev_limit=2"]


def with_sets(argv: list[str], sets: list[str]) -> list[str]:
    for s in sets:
        argv = [*argv, "--set", s]
    return argv


# ------------------------------------------------------------------------- an unseen label set, end to end


@pytest.mark.parametrize("task_file", [None, {"kind": "classification", "labels": TAGS}], ids=["inferred", "file"])
def test_unseen_label_set_validate_train_eval_score_bench(tmp_path, capsys, tiny_llama_dir, tiny_bert_dir,
                                                          task_file):
    data = books(tmp_path / "books", task_file)
    assert run(["data", "validate", str(data)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["task"] == "books"
    assert report["task_source"] == ("inferred" if task_file is None else "file")
    assert run(["tasks", "--data", str(data)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kind"] == "classification" and shown["definition"]["labels"] == TAGS
    assert shown["definition"]["output_field"] == "tag" and shown["definition"]["label_marker"] == "tags:"
    assert shown["definition"]["query_marker"] == "book:"

    sets = tiny_sets(tiny_llama_dir, tiny_bert_dir)
    out = tmp_path / "run"
    assert run(with_sets(["train", "--method", "pplug", "--data", str(data), "--out", str(out)], sets)) == 0
    capsys.readouterr()
    assert json.loads((out / "task.json").read_text())["labels"] == TAGS  # the run carries its task
    assert run(["eval", "--run", str(out), "--data", str(data), "--split", "test"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert set(metrics) == {"accuracy", "f1"}
    for task_arg in (str(data), str(out), str(out / "task.json")):
        assert run(["score", "--task", task_arg, "--golds", str(data / "test_outputs.json"),
                    "--preds", str(out / "preds_test.json")]) == 0
        assert json.loads(capsys.readouterr().out) == pytest.approx(metrics)

    bench = tmp_path / "bench"
    argv = ["bench", "--data", str(data), "--out", str(bench), "--limit", "2", "--latency-questions", "1",
            "--methods", "zero-shot,rag-bm25"]
    assert run(with_sets(argv, sets)) == 0
    rows = {r["method"]: r for r in json.loads((bench / "results.json").read_text())["rows"]}
    for name in ("zero-shot", "rag-bm25"):
        assert rows[name]["status"] == "ok", rows[name]
        assert set(rows[name]["metrics"]) == {"accuracy", "f1"}


def test_contradicted_hint_is_a_notice_and_labels_come_from_the_inputs(tmp_path, caplog):
    data = books(tmp_path / "LaMP-2")  # even the folder name says LaMP-2: the data wins
    res = resolve(data)
    assert res.source == "inferred" and res.task.labels == tuple(TAGS) and res.task.name == "LaMP-2-data"
    assert any("contradicts" in n and "LaMP-2" in n for n in res.notices)
    assert any("pplug data init" in r.getMessage() for r in caplog.records)
    assert get_task("LaMP-2").labels != tuple(TAGS)  # the registered task is untouched


# -------------------------------------------------------------------------- renamed copies, same behaviour


def news_q(split: str, i: int):
    q = {"id": f"{split}{i}", "user_id": f"u{i % 2}",
         "input": ("Which category does this article relate to among the following categories? Just answer with "
                   f"the category name without further explanation. categories: [{', '.join(NEWS)}] "
                   f"article: Title {i}. the cat sat on the mat {i}"),
         "profile": [{"id": f"h{j}", "title": f"Old {j}", "text": "the dog ran", "category": NEWS[j % 3 + 1],
                      "date": f"2021-0{j + 1}-01"} for j in range(3)]}
    return q, ["politics", "world news", "comedy"][i % 3]


def headline_q(split: str, i: int):
    q = {"id": f"{split}{i}", "input": f"Generate a headline for the following article: the cat report {i}",
         "profile": [{"id": f"h{j}", "text": f"the dog ran {j}", "title": f"Dog Runs {j}"} for j in range(2)]}
    return q, f"Cat Report {i}"


def test_renamed_copy_gives_the_same_definition_and_scores(tmp_path, capsys, tiny_llama_dir):
    orig = lamp_folder(tmp_path / "news_categorize", "LaMP_2N", news_q)
    copy = Path(shutil.copytree(orig, tmp_path / "mydata"))
    a, b = resolve(orig), resolve(copy)
    assert a.task is get_task("news_categorize") and b.task is a.task  # not LaMP-2N, whose labels differ
    assert any("LaMP-2N" in n and "contradicts" in n for n in b.notices)
    head = lamp_folder(tmp_path / "news_headline", "LaMP_4", headline_q)
    head_copy = resolve(shutil.copytree(head, tmp_path / "heads")).task
    assert same_task(head_copy, resolve(head).task) and resolve(head).task.name == "news_headline"

    scores = []
    for folder in (orig, copy):
        argv = with_sets(["train", "--method", "zero-shot", "--data", str(folder), "--out", str(folder) + "-run"],
                         [f"backbone.name_or_path={tiny_llama_dir}", "decode.max_new_tokens=3"])
        assert run(argv) == 0
        scores.append(cli_json(["eval", "--run", str(folder) + "-run", "--data", str(folder), "--split", "dev"],
                               capsys)["metrics"])
    assert scores[0] == scores[1]
    preds = [json.loads(Path(str(f) + "-run", "preds_dev.json").read_text()) for f in (orig, copy)]
    assert preds[0]["golds"] == preds[1]["golds"]


# -------------------------------------------------------------- generation in custom JSONL, rating tasks


def recipe_row(i: int, split: str) -> dict:
    return {"id": f"{split}{i}", "user_id": f"u{i % 2}", "input": f"Name this dish. recipe: boil the cat food {i}",
            "output": f"Cat Stew {i}",
            "history": [{"id": f"r{j}", "steps": f"fry the dog food {j}", "dish": f"Dog Fry {j}"} for j in range(3)]}


def test_generation_task_in_custom_jsonl_with_a_task_file(tmp_path, capsys, tiny_llama_dir, tiny_bert_dir):
    data = tmp_path / "recipes"
    data.mkdir()
    for split, n in (("train", 4), ("dev", 2), ("test", 2)):
        (data / f"{split}.jsonl").write_text("\n".join(json.dumps(recipe_row(i, split)) for i in range(n)))
    dump(data / "task.json", {"kind": "generation", "output_field": "dish", "item_text": "{dish}: {steps}",
                              "pair_input": "Name this dish. recipe: {steps}", "query_marker": "recipe:"})
    res = resolve(data)
    t = res.task
    assert res.source == "file" and t.kind == "generation" and t.item_text == "{dish}: {steps}"
    assert t.query("Name this dish. recipe: boil it") == "boil it"
    assert "inferred item_example" in " ".join(res.reasons)  # a missing key is inferred and said so
    out = tmp_path / "run"
    argv = with_sets(["train", "--method", "pplug", "--data", str(data), "--out", str(out)],
                     tiny_sets(tiny_llama_dir, tiny_bert_dir))
    assert run(argv) == 0
    metrics = cli_json(["eval", "--run", str(out), "--data", str(data), "--split", "test"], capsys)["metrics"]
    assert set(metrics) == {"rouge-1", "rouge-L"}


def review_q(split: str, i: int):
    q = {"id": f"{split}{i}", "input": f"How many stars? review: the cat sat {i}",
         "profile": [{"id": f"h{j}", "review": f"the dog ran {j}", "stars": str(j % 5 + 1)} for j in range(3)]}
    return q, str(i % 5 + 1)


def test_rating_task_inferred_and_with_a_wider_scale(tmp_path, capsys, tiny_llama_dir):
    data = lamp_folder(tmp_path / "reviews", "my_reviews", review_q)
    t = resolve(data).task
    assert (t.kind, t.labels, t.pair_output, t.query_marker) == ("rating", ("1", "2", "3", "4", "5"), "stars",
                                                                 "review:")
    argv = with_sets(["train", "--method", "zero-shot", "--data", str(data), "--out", str(tmp_path / "run")],
                     [f"backbone.name_or_path={tiny_llama_dir}", "decode.max_new_tokens=3", "decode.classify=rank"])
    assert run(argv) == 0
    metrics = cli_json(["eval", "--run", str(tmp_path / "run"), "--data", str(data), "--split", "dev"], capsys)
    assert set(metrics["metrics"]) == {"mae", "rmse"}

    ten = [str(x) for x in range(1, 11)]
    dump(data / "task.json", {"kind": "rating", "labels": ten})
    t10 = resolve(data).task
    assert t10.labels == tuple(ten) and t10.parse("I give it 10 stars") == "10" and t10.parse("7/10") == "7"
    assert get_task("LaMP-3").parse("rating 10") == "1"  # LaMP-3 parses as before
    from pplug.metrics import score

    # an unparsable prediction counts as the farther end of the task's own scale (LaMP-3: 1 or 5)
    assert score("rating", ["9"], ["?"], t10.labels)["mae"] == pytest.approx(8.0)
    assert score("rating", ["4"], ["?"], get_task("LaMP-3").labels)["mae"] == pytest.approx(3.0)


# ------------------------------------------------------------------------------------ per-question labels


class RankBackbone:
    """score_options returns fixed scores per option, so ranking is checked without a model."""

    def __init__(self, prefs: dict[str, float]):
        self.prefs = prefs

    def score_options(self, built, options):
        return torch.tensor([[self.prefs[o] for o in options]] * len(built))

    def generate(self, built, max_new_tokens, num_beams):
        return ["thriller or poetry"] * len(built)


def test_per_question_label_lists_drive_parsing_and_ranking(tmp_path):
    from pplug.config import DecodeConfig
    from pplug.methods.baselines import decode_outputs

    t = resolve(books(tmp_path / "books")).task
    narrow = "tags: [memoir, poetry] book: x"
    assert t.labels_for(narrow) == ("memoir", "poetry") and t.labels_for("book: x") == tuple(TAGS)
    assert t.parse("thriller or poetry") == "thriller" and t.parse("thriller or poetry", t.labels_for(narrow)) == \
        "poetry"
    backbone = RankBackbone({"thriller": 0.0, "memoir": -3.0, "poetry": -1.0, "cookbook": -2.0})
    built = [0, 0]  # only its length is used here
    allowed = [t.labels_for(narrow), None]
    best, _ = decode_outputs(backbone, t, built, DecodeConfig(classify="rank"), allowed)
    assert best == ["poetry", "thriller"]
    _, parsed = decode_outputs(backbone, t, built, DecodeConfig(), allowed)
    assert parsed == ["poetry", "thriller"]


def test_gold_outside_its_inputs_list_is_a_record_error(tmp_path, capsys):
    data = books(tmp_path / "books")
    qs = json.loads((data / "dev_questions.json").read_text())
    qs[1]["input"] = qs[1]["input"].replace(", ".join(TAGS), "poetry, cookbook")  # its gold is memoir
    dump(data / "dev_questions.json", qs)
    assert run(["data", "validate", str(data)]) == 2
    err = capsys.readouterr().err
    assert "dev_questions.json, record 1, field 'input'" in err and "gold output is 'memoir'" in err


# ------------------------------------------------------------------------------------------ data init


def test_data_init_writes_what_it_inferred_and_why(tmp_path, capsys):
    data = books(tmp_path / "books")
    inferred = resolve(data).task
    assert run(["data", "init", str(data)]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "kind: classification" in out and "labels:" in out and "output_field: 'tag'" in out
    written = json.loads((data / "task.json").read_text())
    assert written["labels"] == TAGS and written["kind"] == "classification"
    res = resolve(data)
    assert res.source == "file" and same_task(res.task, inferred)
    assert run(["data", "init", str(data)]) == 2  # never overwrites without --force
    assert "--force" in capsys.readouterr().err
    assert run(["data", "init", str(data), "--force"]) == 0


def test_data_init_on_a_registered_shape_keeps_its_prompts(tmp_path, capsys):
    data = lamp_folder(tmp_path / "copy_of_news", "LaMP_2N", news_q)
    assert run(["data", "init", str(data)]) == 0
    assert "registered task" in capsys.readouterr().out
    assert resolve(data).source == "file" and same_task(resolve(data).task, get_task("news_categorize"))
    inferred = resolve_without_file(data, use_registry=False).task
    assert inferred.labels == tuple(NEWS) and inferred.pair_output == "category"


# --------------------------------------------------------------------------------------- bad task files


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ({"kind": "classification", "colour": "red"}, ["key 'colour'", "unknown key"]),
        ({"kind": "classification", "labels": ["thriller", "memoir", "poetry"]}, ["key 'labels'", "'cookbook'",
                                                                                  "train_outputs.json, record 3"]),
        ({"kind": "regression"}, ["key 'kind'", "'regression' is not a kind"]),
        ({"kind": "rating"}, ["key 'kind'", "not a number"]),
        ({"item_text": "{title}: {description}"}, ["key 'item_text'", "field 'title'"]),
        ({"output_field": "genre"}, ["key 'output_field'", "field 'genre'"]),
        ({"pair_input": "Tag {description"}, ["key 'pair_input'", "bad template"]),
        ({"labels": "thriller"}, ["key 'labels'", "list of strings"]),
        ({"kind": "generation", "labels": TAGS}, ["key 'labels'", "generation"]),
        ({"name": "LaMP-5"}, ["key 'name'", "another definition"]),
        ("{not json", ["invalid JSON"]),
    ],
    ids=["unknown-key", "label-missing", "bad-kind", "wrong-kind", "template-field", "output-field",
         "bad-template", "labels-type", "labels-for-generation", "name-taken", "bad-json"],
)
def test_bad_task_files_are_one_line_errors(tmp_path, capsys, content, fragments):
    data = books(tmp_path / "books")
    if isinstance(content, str):
        (data / "task.json").write_text(content)
    else:
        dump(data / "task.json", content)
    assert run(["data", "validate", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data / 'task.json'}") and err.count("\n") == 1 and "Traceback" not in err
    for frag in fragments:
        assert frag in err, err


@pytest.mark.parametrize("argv", [["data", "init", "--help"], ["tasks", "--help"]])
def test_new_commands_have_help(capsys, argv):
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert "Usage" in out and ("--force" in out or "--data" in out)


# ----------------------------------------------------------------------------------------------- serving


def test_server_lists_and_serves_a_task_from_a_task_file(tmp_path, tiny_llama_dir, tiny_bert_dir):
    from fastapi.testclient import TestClient

    from pplug.config import RunConfig
    from pplug.resources import Resources
    from pplug.runner import train_run
    from pplug.server import ServerConfig, create_app

    data = books(tmp_path / "books", {"kind": "classification", "name": "book_tags"})
    cfg = RunConfig(method="pplug", data=str(data))
    cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(tiny_llama_dir), str(tiny_bert_dir)
    cfg.train.max_steps, cfg.train.progress, cfg.train.augment_copies, cfg.train.dev_limit = 1, False, 0, 1
    resources = Resources(embedding_cache=None)
    train_run(cfg, tmp_path / "run", resources)
    tasks_mod._REGISTRY.pop("book_tags")  # as in a fresh server process: only the run folder knows the task
    tasks_mod._DEFINED.discard("book_tags")
    assert not has_task("book_tags")
    app = create_app(ServerConfig(runs=[str(tmp_path / "run")], db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
                                  tenants={"a": "key-a"}, batch_window_ms=1.0), resources)
    auth = {"Authorization": "Bearer key-a"}
    with TestClient(app) as client:
        listed = client.get("/v1/tasks", headers=auth).json()
        assert [(t["name"], t["kind"]) for t in listed] == [("book_tags", "classification")]
        item = {"id": "b1", "fields": {"description": "a story about the cat", "tag": "memoir"}}
        assert client.post("/v1/users/ann/items", headers=auth, json={"items": [item]}).status_code == 201
        r = client.post("/v1/generate", headers=auth, json={"user_id": "ann", "task": "book_tags",
                                                             "input": "tags: [thriller, memoir] book: x"})
        assert r.status_code == 200, r.text
        assert r.json()["task"] == "book_tags"
    assert isinstance(get_task("book_tags"), Task)


@pytest.mark.parametrize("spec", ["task-lora", "oppu-rag", "pplug-rag", "pplug:no_persona", "rag-recency"])
def test_every_method_family_runs_on_an_inferred_task(tmp_path, tiny_llama_dir, tiny_bert_dir, spec):
    from pplug.config import config_from_spec
    from pplug.runner import eval_run, train_run

    data = books(tmp_path / "books")
    cfg = config_from_spec(spec, str(data), [*tiny_sets(tiny_llama_dir, tiny_bert_dir), "lora.users=1",
                                             "lora.user_epochs=1"])
    train_run(cfg, tmp_path / "run")
    report = eval_run(tmp_path / "run", data, "test", limit=2)
    assert report["task"] == "books" and set(report["metrics"]) == {"accuracy", "f1"}


def test_a_task_file_with_only_labels_is_a_label_task(tmp_path):
    data = lamp_folder(tmp_path / "plain", "X", lambda s, i: ({"id": f"{s}{i}", "input": f"book: the cat {i}",
                                                               "profile": [{"id": "h", "tag": "memoir"}]},
                                                              TAGS[i % 4]))
    dump(data / "task.json", {"labels": TAGS})
    t = resolve(data).task
    assert (t.kind, t.labels, t.pair_output, t.label_marker) == ("classification", tuple(TAGS), "tag", None)
    folder = shutil.copytree(data, tmp_path / "LaMP-5")  # named after a registered task it is not
    assert resolve(folder).task.name == "LaMP-5-data" and get_task("LaMP-5").kind == "generation"
    dump(data / "task.json", {"labels": [1, 2, 3, 4]})  # numbers: a rating scale, which these golds are not
    with pytest.raises(PPlugError, match="key 'labels': rating, but gold 'thriller'"):
        resolve(data)
