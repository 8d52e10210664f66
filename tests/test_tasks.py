"""Tests for pplug.tasks: query extraction, item rendering, parsing, gold checks and the registry."""

from __future__ import annotations

import pytest

from pplug import tasks as tasks_mod
from pplug.data.records import HistoryItem
from pplug.errors import PPlugError
from pplug.metrics import score
from pplug.tasks import (
    HUFFPOST_CATEGORIES,
    LAMP2N_CATEGORIES,
    SYNTH_TOPICS,
    Task,
    get_task,
    has_task,
    register_task,
    task_for_lamp_field,
    task_names,
)


@pytest.fixture
def scratch_registry(monkeypatch):
    """A private copy of the registry, so registering in a test never leaks into others."""
    monkeypatch.setattr(tasks_mod, "_REGISTRY", dict(tasks_mod._REGISTRY))
    return tasks_mod._REGISTRY


def _gen(name: str, kind: str = "generation", **over) -> Task:
    kw = dict(item_text="{text}", item_example='"{text}"', pair_input="Say: {text}", pair_output="text")
    kw.update(over)
    return Task(name, kind, "X_1", **kw)


# ---------------------------------------------------------------------------------------------- queries

LAMP1_INPUT = ('For an author who has written the paper with the title "Deep Cats", which reference is related? '
               'Just answer with [1] or [2] without explanation. [1]: "Feline vision" [2]: "Quantum dogs"')


@pytest.mark.parametrize(
    ("task", "text", "query"),
    [
        ("LaMP-1", LAMP1_INPUT, "Deep Cats Feline vision Quantum dogs"),
        ("LaMP-1", "  no quotes here  ", "no quotes here"),
        ("LaMP-2N", "Which category ... categories: [travel, women] article: Big win. The team won. ",
         "Big win. The team won."),
        ("news_categorize", "article: first article: the real one", "the real one"),  # the last marker
        ("LaMP-4", "Generate a headline for the following article: Storm hits coast", "Storm hits coast"),
        ("LaMP-5", "Generate a title for the following abstract of a paper: We study cats.", "We study cats."),
        ("scholarly_title", "Generate a title for the following abstract of a paper:\nLine one.\n",
         "Line one."),
        ("LaMP-5", "  no marker at all ", "no marker at all"),
        ("LaMP-3", "What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, "
                   "4, or 5 without further explanation. review: Great blender, loud.", "Great blender, loud."),
        ("LaMP-7", "Paraphrase the following tweet without any explanation before or after it: I love mondays",
         "I love mondays"),
        ("LaMP-2", "tags: [comedy] description: A cat goes to space.", "A cat goes to space."),
        ("synth_topic", "categories: [sports, music] note: the weather was fine", "the weather was fine"),
    ],
)
def test_query_extraction(task, text, query):
    assert get_task(task).query(text) == query


# ------------------------------------------------------------------------------------------- rendering

PAPER_ITEM = HistoryItem("p1", {"title": "Deep Cats", "abstract": "We study cats."}, "2020-01-01")


def test_render_paper_item():
    t = get_task("LaMP-5")
    assert t.render_item(PAPER_ITEM) == "Deep Cats We study cats."
    assert t.render_example(PAPER_ITEM) == '"Deep Cats" is a title for "We study cats."'
    assert t.item_pair(PAPER_ITEM) == ("Generate a title for the following abstract of a paper: We study cats.",
                                       "Deep Cats")
    # a pair input is a valid task input: its query is the item's abstract
    assert t.query(t.item_pair(PAPER_ITEM)[0]) == "We study cats."
    assert t.item_fields == ("title", "abstract")


def test_render_category_and_rating_items():
    news = get_task("news_categorize")
    item = HistoryItem("n1", {"title": "Vote today", "text": "Polls open.", "category": "politics"})
    assert news.render_item(item) == "politics: Polls open. Vote today"
    assert news.render_example(item) == 'the category for the article "Vote today. Polls open." is "politics"'
    pair_in, pair_out = news.item_pair(item)
    assert pair_out == "politics" and pair_in.endswith("article: Vote today. Polls open.")
    assert news.labels_in_input(pair_in) == list(HUFFPOST_CATEGORIES)
    assert news.query(pair_in) == "Vote today. Polls open."
    assert set(news.item_fields) == {"category", "text", "title"}

    rating = get_task("LaMP-3")
    review = HistoryItem("r1", {"text": "Loved it", "score": 5})
    assert rating.render_item(review) == "5: Loved it"
    assert rating.item_pair(review) == (rating.pair_input.format(text="Loved it"), "5")
    assert rating.query(rating.item_pair(review)[0]) == "Loved it"


def test_item_pair_strips_output_and_missing_field_raises():
    t = get_task("LaMP-7")
    assert t.item_pair(HistoryItem("t", {"text": "  hi there \n"}))[1] == "hi there"
    with pytest.raises(KeyError):
        get_task("LaMP-5").render_item(HistoryItem("x", {"title": "only title"}))


def test_prompt_with_and_without_examples():
    t = get_task("LaMP-5")
    assert t.prompt("INPUT") == "INPUT" and t.prompt("INPUT", []) == "INPUT"
    assert t.prompt("INPUT", ["a", "b"]) == "Past items of this user:\n- a\n- b\n\nINPUT"


# ---------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("task", "raw", "parsed"),
    [
        ("news_categorize", "politics", "politics"),
        ("news_categorize", "  POLITICS.\n", "politics"),
        ("news_categorize", '"Style & Beauty"', "style & beauty"),
        ("news_categorize", "I think it is Politics.", "politics"),
        ("news_categorize", "Either sports or crime, probably sports.", "sports"),  # earliest label wins
        ("news_categorize", "Crime, then sports.", "crime"),
        ("news_categorize", "banana", "banana"),  # unknown stays as text
        ("news_categorize", "  'Banana'. ", "Banana"),
        ("LaMP-2", "It's a dark comedy.", "dark comedy"),  # earliest (and longest) match
        ("LaMP-2", "Sci-Fi", "sci-fi"),
        ("LaMP-1", "[2]", "[2]"),
        ("LaMP-1", "The answer is [1].", "[1]"),
        ("LaMP-2N", "Food & Drink", "food & drink"),
        ("synth_topic", "Category: Music", "music"),
    ],
)
def test_parse_classification(task, raw, parsed):
    assert get_task(task).parse(raw) == parsed


def test_parse_classification_matches_whole_words():
    assert get_task("news_categorize").parse("It immediately struck me as politics.") == "politics"


def test_unknown_label_scores_as_wrong():
    t = get_task("news_categorize")
    preds = [t.parse(r) for r in ("Politics!", "I would say sports", "banana")]
    assert preds == ["politics", "sports", "banana"]
    m = score(t.kind, ["politics", "sports", "crime"], preds, t.labels)
    assert m["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [("4", "4"), (" 5 stars", "5"), ("I'd rate it 3 out of 5", "3"), ("Score: 2.", "2"), ("0 or 7", "0 or 7"),
     ("no idea", "no idea"), ("rating 10", "1")],
)
def test_parse_rating(raw, parsed):
    assert get_task("LaMP-3").parse(raw) == parsed


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("Deep Cats", "Deep Cats"),
        ("\n\n  Title: Deep Cats  \nsecond line", "Deep Cats"),
        ('title: "Deep Cats"', "Deep Cats"),
        ('"Quoted Title"', "Quoted Title"),
        ("Headline:Storm Hits", "Storm Hits"),
        ("A Title: With Colon", "A Title: With Colon"),
        ("   \n  ", ""),
    ],
)
def test_parse_generation(raw, parsed):
    assert get_task("LaMP-5").parse(raw) == parsed


# ------------------------------------------------------------------------------------ golds and labels


def test_check_gold():
    news = get_task("news_categorize")
    assert news.check_gold("politics") is None and news.check_gold(" politics ") is None
    assert "not one of the task's labels" in news.check_gold("Politics")
    assert get_task("LaMP-3").check_gold("4") is None
    assert "not a number" in get_task("LaMP-3").check_gold("four")
    assert get_task("LaMP-5").check_gold("") is None


def test_labels_in_input():
    t = get_task("LaMP-2N")
    assert t.labels_in_input("categories: [travel,  women , style & beauty] article: x") == \
        ["travel", "women", "style & beauty"]
    assert t.labels_in_input("article: no list here") is None
    assert get_task("LaMP-2").labels_in_input("tags: [comedy, action] description: d") == ["comedy", "action"]
    assert get_task("LaMP-5").labels_in_input("categories: [a, b]") is None  # no label marker
    synth = get_task("synth_topic")
    assert synth.labels_in_input(synth.pair_input.format(text="x")) == list(SYNTH_TOPICS)
    assert get_task("LaMP-2N").labels == LAMP2N_CATEGORIES


# --------------------------------------------------------------------------------------------- registry


def test_get_task_normalization():
    assert get_task("LaMP_5").name == "LaMP-5"
    assert get_task("lamp-5").name == "LaMP-5"
    assert get_task("LAMP-2n").name == "LaMP-2N"
    assert get_task("scholarly-title").name == "scholarly_title"
    assert has_task("lamp_7") and not has_task("LaMP-9")
    assert task_for_lamp_field("LaMP_2N") == "LaMP-2N"
    with pytest.raises(PPlugError, match="unknown task field 'LaMP_9'"):
        task_for_lamp_field("LaMP_9", "here")


def test_get_task_unknown_lists_registered():
    with pytest.raises(PPlugError) as info:
        get_task("LaMP-99")
    msg = str(info.value)
    assert "unknown task 'LaMP-99'" in msg
    for name in ("LaMP-1", "LaMP-5", "scholarly_title", "news_categorize", "synth_topic", "synth_title"):
        assert name in msg


def test_builtin_registry():
    names = task_names()
    assert {"LaMP-1", "LaMP-2", "LaMP-2N", "LaMP-3", "LaMP-4", "LaMP-5", "LaMP-6", "LaMP-7", "scholarly_title",
            "news_headline", "news_categorize", "synth_topic", "synth_title"} <= set(names)
    kinds = {n: get_task(n).kind for n in names}
    assert kinds["LaMP-3"] == "rating" and kinds["LaMP-1"] == "classification" and kinds["LaMP-7"] == "generation"
    for n in names:
        t = get_task(n)
        assert t.pair_output in t.item_fields
        if t.kind != "generation":
            assert t.labels and len(set(t.labels)) == len(t.labels)


def test_register_task(scratch_registry):
    t = register_task(_gen("my_task"))
    assert get_task("My-Task") is t and "my_task" in task_names()
    with pytest.raises(ValueError, match="already registered"):
        register_task(_gen("my_task"))
    with pytest.raises(ValueError, match="already registered"):
        register_task(_gen("LaMP-5"))
    with pytest.raises(ValueError, match="needs labels"):
        register_task(_gen("cls", kind="classification"))
    with pytest.raises(ValueError, match="needs labels"):
        register_task(_gen("rat", kind="rating", labels=()))
    with pytest.raises(ValueError, match="kind must be one of"):
        register_task(_gen("weird", kind="regression"))
    assert register_task(_gen("cls2", kind="classification", labels=("a", "b"))).parse("B") == "b"
    assert not has_task("cls") and not has_task("weird")


def test_scratch_registry_does_not_leak():
    assert not has_task("my_task") and not has_task("cls2")


def test_register_task_refuses_normalized_duplicate(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_task(_gen("lamp_5"))
