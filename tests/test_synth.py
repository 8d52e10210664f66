"""Tests for pplug.synth: determinism, LaMP file format and the personalization property."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pplug.synth import (
    SPLITS,
    SYNTH_TASKS,
    SYNTH_TOPIC_LABELS,
    TITLE_PROMPT,
    TITLE_STYLES,
    SynthConfig,
    TitleStyle,
    apply_style,
    base_title,
    infer_style,
    synthesize,
    user_majority_label,
)

SMALL = {"n_train_users": 6, "n_dev_users": 3, "n_test_users": 3}


def _load(folder: Path, split: str) -> tuple[list[dict], dict]:
    questions = json.loads((folder / f"{split}_questions.json").read_text(encoding="utf-8"))
    outputs = json.loads((folder / f"{split}_outputs.json").read_text(encoding="utf-8"))
    return questions, outputs


def _all_bytes(folders: dict[str, Path]) -> dict[str, bytes]:
    return {f"{t}/{p.name}": p.read_bytes() for t, d in folders.items() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def default_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return synthesize(tmp_path_factory.mktemp("synth_default"))


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a = _all_bytes(synthesize(tmp_path / "a", SynthConfig(seed=3, **SMALL)))
    b = _all_bytes(synthesize(tmp_path / "b", SynthConfig(seed=3, **SMALL)))
    c = _all_bytes(synthesize(tmp_path / "c", SynthConfig(seed=4, **SMALL)))
    assert len(a) == len(SYNTH_TASKS) * len(SPLITS) * 2
    assert a == b
    assert all(a[k] != c[k] for k in a if k.endswith("_questions.json"))


def test_returns_task_folders(tmp_path: Path) -> None:
    folders = synthesize(str(tmp_path / "nested" / "out"), SynthConfig(**SMALL))
    assert list(folders) == list(SYNTH_TASKS)
    for task, folder in folders.items():
        assert folder == tmp_path / "nested" / "out" / task and folder.is_dir()


@pytest.mark.parametrize("task", SYNTH_TASKS)
def test_lamp_format(tmp_path: Path, task: str) -> None:
    cfg = SynthConfig(seed=1, n_train_users=8, n_dev_users=4, n_test_users=5)
    folder = synthesize(tmp_path, cfg)[task]
    field = "category" if task == "synth_topic" else "title"
    users_by_split: dict[str, set[str]] = {}
    all_ids: list[str] = []
    for split in SPLITS:
        questions, outputs = _load(folder, split)
        assert outputs["task"] == task
        assert [g["id"] for g in outputs["golds"]] == [q["id"] for q in questions]
        assert all(set(g) == {"id", "output"} and g["output"] for g in outputs["golds"])
        per_user = Counter(q["user_id"] for q in questions)
        n_users = {"train": 8, "dev": 4, "test": 5}[split]
        n_q = 3 if split == "train" else 2
        assert len(per_user) == n_users and set(per_user.values()) == {n_q}
        users_by_split[split] = set(per_user)
        all_ids += [q["id"] for q in questions]
        for q in questions:
            assert set(q) == {"id", "user_id", "input", "profile"}
            assert len(q["input"].split()) <= 45
            profile = q["profile"]
            assert cfg.min_profile <= len(profile) <= cfg.max_profile
            ids = [it["id"] for it in profile]
            assert len(set(ids)) == len(ids)
            dates = [it["date"] for it in profile]
            assert all(a < b for a, b in zip(dates, dates[1:], strict=False))
            for it in profile:
                assert set(it) == {"id", "date", "text", field}
                assert len(it["date"]) == 10 and it["date"][4] == "-" and it["date"][7] == "-"
        for out in outputs["golds"]:
            assert 1 <= len(out["output"].split()) <= 8
        # a user's later question sees a longer (extended) history than her earlier one
        by_user: dict[str, list[dict]] = {}
        for q in questions:
            by_user.setdefault(q["user_id"], []).append(q)
        for qs in by_user.values():
            for early, late in zip(qs, qs[1:], strict=False):
                assert late["profile"][-1]["date"] > early["profile"][-1]["date"]
    assert len(set(all_ids)) == len(all_ids)
    assert not users_by_split["train"] & users_by_split["dev"]
    assert not users_by_split["train"] & users_by_split["test"]
    assert not users_by_split["dev"] & users_by_split["test"]


def test_topic_labels_and_prompt(default_folders: dict[str, Path]) -> None:
    questions, outputs = _load(default_folders["synth_topic"], "train")
    assert {g["output"] for g in outputs["golds"]} == set(SYNTH_TOPIC_LABELS)
    prompt = "categories: [sports, music, science, travel, food, politics] note: "
    assert all(prompt in q["input"] for q in questions)
    # the note itself never names its category
    for q in questions:
        words = set(q["input"].split("note: ", 1)[1].split())
        assert not words & set(SYNTH_TOPIC_LABELS)


def test_topic_profile_oracle_beats_global_majority(default_folders: dict[str, Path]) -> None:
    folder = default_folders["synth_topic"]
    _, train_out = _load(folder, "train")
    global_label = Counter(g["output"] for g in train_out["golds"]).most_common(1)[0][0]
    oracle = glob = total = 0
    for split in ("dev", "test"):
        questions, outputs = _load(folder, split)
        for q, g in zip(questions, outputs["golds"], strict=True):
            oracle += user_majority_label(q["profile"], "category") == g["output"]
            glob += global_label == g["output"]
            total += 1
    oracle_acc, global_acc = oracle / total, glob / total
    assert oracle_acc >= 0.6
    assert oracle_acc - global_acc >= 0.35


def test_title_style_oracle(default_folders: dict[str, Path]) -> None:
    folder = default_folders["synth_title"]
    oracle = plain = total = 0
    for split in ("dev", "test"):
        questions, outputs = _load(folder, split)
        for q, g in zip(questions, outputs["golds"], strict=True):
            assert q["input"].startswith(TITLE_PROMPT)
            last = q["profile"][-1]
            style = infer_style(last["title"], base_title(last["text"]))
            assert style is not None
            words = base_title(q["input"]).split()
            assert " ".join(words) in g["output"].lower()
            oracle += apply_style(words, style) == g["output"]
            plain += " ".join(words) == g["output"]
            total += 1
    assert oracle / total >= 0.9
    assert plain / total < 0.4


def test_titles_follow_one_style_per_user(default_folders: dict[str, Path]) -> None:
    questions, outputs = _load(default_folders["synth_title"], "train")
    styles: dict[str, set[TitleStyle | None]] = {}
    for q, g in zip(questions, outputs["golds"], strict=True):
        seen = styles.setdefault(q["user_id"], set())
        seen.add(infer_style(g["output"], base_title(q["input"])))
        seen.update(infer_style(it["title"], base_title(it["text"])) for it in q["profile"])
    assert all(len(s) == 1 and None not in s for s in styles.values())
    assert len({next(iter(s)) for s in styles.values()}) >= 10


def test_base_title_and_apply_style() -> None:
    article = "researchers reported that the new battery charges homes near the coast."
    assert base_title(article) == "new battery charges homes"
    assert base_title(TITLE_PROMPT + article) == "new battery charges homes"
    words = base_title(article).split()
    assert apply_style(words, TitleStyle("upper", "Breaking: ")) == "Breaking: NEW BATTERY CHARGES HOMES"
    assert apply_style(words, TitleStyle("title", "", " !")) == "New Battery Charges Homes !"
    assert apply_style("new battery charges homes", TitleStyle("sentence", "", " - report")) == (
        "New battery charges homes - report"
    )
    assert TitleStyle("lower") not in TITLE_STYLES
    for style in TITLE_STYLES:
        assert infer_style(apply_style(words, style), words) == style
    with pytest.raises(ValueError):
        apply_style(words, TitleStyle("wavy"))


def test_user_majority_label_ties_go_to_most_recent() -> None:
    assert user_majority_label([], "category") is None
    profile = [
        {"date": "2020-01-01", "category": "food"},
        {"date": "2020-01-03", "category": "music"},
        {"date": "2020-01-02", "category": "music"},
        {"date": "2020-01-04", "category": "food"},
    ]
    assert user_majority_label(profile, "category") == "food"
    assert user_majority_label(profile[:3], "category") == "music"
    older = [{"date": "2019-01-01", "category": "sports"}] * 3
    assert user_majority_label(profile + older, "category") == "sports"


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        synthesize(tmp_path, SynthConfig(min_profile=10, max_profile=5))
    with pytest.raises(ValueError):
        synthesize(tmp_path, SynthConfig(favorite_prob=1.5))
