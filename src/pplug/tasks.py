"""Task registry: what each personalization task looks like (labels, prompts, item rendering, parsing).

A task is one declarative ``Task`` entry; adding a task is one ``register_task(Task(...))`` call.
Templates are ``str.format`` strings over a history item's fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from pplug.data.records import HistoryItem
from pplug.errors import PPlugError

KINDS = ("classification", "rating", "generation")


@dataclass(frozen=True)
class Task:
    """One task.

    Args:
        name: registry name (e.g. ``LaMP-5``, ``scholarly_title``).
        kind: classification | rating | generation (selects the metrics).
        lamp_field: the ``task`` field its LaMP outputs files carry (e.g. ``LaMP_5``).
        labels: the label list for classification/rating, in official order.
        query_marker: the input's query part is the text after the last occurrence of this marker
            (what the encoder and retrievers see); ``None`` uses the whole input.
        item_text: how a history item is rendered for the encoder and retrievers.
        item_example: how a history item is shown in a retrieval-augmented prompt (with its output).
        pair_input: OPPU: a history item turned into a task input ...
        pair_output: ... and its output (a field name).
        label_marker: for classification inputs that list their labels (``categories: [..]``).
    """

    name: str
    kind: str
    lamp_field: str
    item_text: str
    item_example: str
    pair_input: str
    pair_output: str
    labels: tuple[str, ...] | None = None
    query_marker: str | None = None
    label_marker: str | None = None
    description: str = ""

    @property
    def item_fields(self) -> tuple[str, ...]:
        """Fields a profile item must have for this task."""
        names = re.findall(r"{(\w+)", self.item_text + self.item_example + self.pair_input)
        return tuple(dict.fromkeys([*names, self.pair_output]))

    def query(self, text: str) -> str:
        """The query part of an input (e.g. the abstract), what encoders and retrievers see."""
        if self.query_marker is None:
            return text.strip()
        if self.query_marker == '"':  # LaMP-1: the quoted title and references
            quoted = re.findall(r'"([^"]*)"', text)
            return " ".join(quoted) if quoted else text.strip()
        pos = text.rfind(self.query_marker)
        return text[pos + len(self.query_marker):].strip() if pos >= 0 else text.strip()

    def body_start(self, text: str) -> int:
        """Where the body (the query part) of a prompt text starts: right after the last ``query_marker``.

        What comes before (retrieved examples, the instruction, a label list) is the head that
        truncation keeps (see ``PromptParts``). 0 (all body, cut from the right) when there is no marker
        or it is LaMP-1's quote marker.
        """
        if self.query_marker is None or self.query_marker == '"':
            return 0
        pos = text.rfind(self.query_marker)
        return pos + len(self.query_marker) if pos >= 0 else 0

    def render_item(self, item: HistoryItem) -> str:
        return self.item_text.format(**item.fields).strip()

    def render_example(self, item: HistoryItem) -> str:
        return self.item_example.format(**item.fields).strip()

    def item_pair(self, item: HistoryItem) -> tuple[str, str]:
        """OPPU training pair (input, output) from one of the user's own history items."""
        return self.pair_input.format(**item.fields), str(item.fields[self.pair_output]).strip()

    def prompt(self, text: str, examples: list[str] | None = None) -> str:
        """The user-turn text: optional retrieved examples, then the task input."""
        if not examples:
            return text
        shown = "\n".join(f"- {e}" for e in examples)
        return f"Past items of this user:\n{shown}\n\n{text}"

    def parse(self, raw: str, labels: tuple[str, ...] | list[str] | None = None) -> str:
        """Turn a raw model output into a prediction (a label, a rating, or a cleaned text).

        Args:
            labels: the labels this question allows (its input's own list); the task's labels when None.
        """
        text = raw.strip()
        if self.kind == "generation":
            line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
            line = re.sub(r"^(title|headline|subject|tweet|answer)\s*:\s*", "", line, flags=re.I)
            return line.strip().strip('"').strip()
        labels = tuple(labels) if labels else self.labels
        assert labels is not None
        if self.kind == "rating":
            if all(len(lab) == 1 and lab.isdigit() for lab in labels):  # LaMP-3: the first digit of the scale
                m = re.search("[" + "".join(labels) + "]", text)
            else:
                m = next((n for n in re.finditer(r"-?\d+(?:\.\d+)?", text) if n.group(0) in labels), None)
            return m.group(0) if m else text
        cleaned = text.strip().strip("\"'.` ").strip()
        by_lower = {lab.lower(): lab for lab in labels}
        if cleaned.lower() in by_lower:
            return by_lower[cleaned.lower()]
        low = text.lower()
        hits = []
        for lab in labels:
            m = re.search(r"(?<!\w)" + re.escape(lab.lower()) + r"(?!\w)", low)
            if m:
                hits.append((m.start(), -len(lab), lab))
        return min(hits)[2] if hits else cleaned

    def check_gold(self, gold: str) -> str | None:
        """A message if a gold output is invalid for this task, else None."""
        if self.kind == "classification" and self.labels is not None and gold.strip() not in self.labels:
            return f"'{gold}' is not one of the task's labels {list(self.labels)}"
        if self.kind == "rating":
            try:
                value = float(gold)
            except ValueError:
                return f"'{gold}' is not a number"
            if self.labels and not float(self.labels[0]) <= value <= float(self.labels[-1]):
                return f"'{gold}' is outside the rating range {self.labels[0]}..{self.labels[-1]}"
        return None

    def labels_in_input(self, text: str) -> list[str] | None:
        """The label list an input spells out after ``label_marker`` (``categories: [a, b]``), if any."""
        if self.label_marker is None:
            return None
        m = re.search(re.escape(self.label_marker) + r"\s*\[([^\]]*)\]", text)
        return [s.strip() for s in m.group(1).split(",")] if m else None

    def labels_for(self, text: str) -> tuple[str, ...] | None:
        """The labels a question allows: the list its input spells out, else the task's labels."""
        listed = self.labels_in_input(text) if self.kind != "generation" else None
        return tuple(listed) if listed else self.labels


_REGISTRY: dict[str, Task] = {}
_DEFINED: set[str] = set()  # names added by define_task (from task files / data), replaceable


def same_definition(a: Task, b: Task) -> bool:
    """Equal in everything that changes prompts, parsing or scores (name and description aside)."""
    return replace(a, name="", description="", lamp_field="") == replace(b, name="", description="", lamp_field="")


def register_task(task: Task) -> Task:
    """Add a task; refuses duplicate names and unknown kinds."""
    if has_task(task.name):
        raise ValueError(f"task '{task.name}' is already registered")
    if task.kind not in KINDS:
        raise ValueError(f"task '{task.name}': kind must be one of {KINDS}, got '{task.kind}'")
    if task.kind != "generation" and not task.labels:
        raise ValueError(f"task '{task.name}': a {task.kind} task needs labels")
    _REGISTRY[task.name] = task
    return task


def define_task(task: Task) -> Task:
    """Register a task defined by data (a task file or inference); a later definition of the same name replaces
    an earlier data-defined one. A task registered in code is never replaced: the same name with a different
    definition is refused (returns the registered task when the definitions are the same)."""
    for key, old in list(_REGISTRY.items()):
        if _norm(key) == _norm(task.name):
            if key in _DEFINED:
                del _REGISTRY[key]
                _DEFINED.discard(key)
            elif same_definition(old, task):
                return old
            else:
                raise PPlugError(f"task name '{task.name}' is a registered task with another definition; "
                                 "give the task file another 'name'")
    register_task(task)
    _DEFINED.add(task.name)
    return task


def is_defined_by_data(name: str) -> bool:
    """True for tasks added by ``define_task`` (task files, inference), False for tasks registered in code."""
    return any(_norm(name) == _norm(t) for t in _DEFINED)


def _norm(name: str) -> str:
    return name.replace("_", "-").lower()


def has_task(name: str) -> bool:
    return any(_norm(name) == _norm(t) for t in _REGISTRY)


def get_task(name: str) -> Task:
    """A registered task by name (case/underscore-insensitive: ``LaMP_5`` == ``lamp-5``)."""
    for key, task in _REGISTRY.items():
        if _norm(key) == _norm(name):
            return task
    raise PPlugError(f"unknown task '{name}'; registered tasks: {', '.join(_REGISTRY)}")


def task_names() -> list[str]:
    return list(_REGISTRY)


def task_for_lamp_field(field: str, where: object = "") -> str:
    """The registered task for a LaMP outputs ``task`` field (``LaMP_2N`` -> ``LaMP-2N``)."""
    if has_task(field):
        return get_task(field).name
    raise PPlugError(f"{where}: unknown task field '{field}'; pass --task NAME ({', '.join(_REGISTRY)})")


LAMP2_TAGS = ("sci-fi", "based on a book", "comedy", "action", "twist ending", "dystopia", "dark comedy",
              "classic", "psychology", "fantasy", "romance", "thought-provoking", "social commentary",
              "violence", "true story")
LAMP2N_CATEGORIES = ("travel", "education", "parents", "style & beauty", "entertainment", "food & drink",
                     "science & technology", "business", "sports", "healthy living", "women", "politics",
                     "crime", "culture & arts", "religion")
HUFFPOST_CATEGORIES = ("politics", "entertainment", "world news", "u.s. news", "comedy", "black voices",
                       "media", "queer voices", "crime", "sports", "women", "weird news", "style & beauty",
                       "home & living", "wellness")
SYNTH_TOPICS = ("sports", "music", "science", "travel", "food", "politics")
RATINGS = ("1", "2", "3", "4", "5")

_PAPER = dict(item_text="{title} {abstract}", item_example='"{title}" is a title for "{abstract}"',
              pair_input="Generate a title for the following abstract of a paper: {abstract}",
              pair_output="title", query_marker="abstract of a paper:")
_NEWS_HEADLINE = dict(item_text="{text} {title}", item_example='"{title}" is a headline for "{text}"',
                      pair_input="Generate a headline for the following article: {text}",
                      pair_output="title", query_marker="article:")
_NEWS_CATEGORY = dict(item_text="{category}: {text} {title}",
                      item_example='the category for the article "{title}. {text}" is "{category}"',
                      pair_output="category", query_marker="article:", label_marker="categories:")


def _category_prompt(labels: tuple[str, ...]) -> str:
    return ("Which category does this article relate to among the following categories? Just answer with "
            f"the category name without further explanation. categories: [{', '.join(labels)}] "
            "article: {title}. {text}")


for _t in (
    Task("LaMP-1", "classification", "LaMP_1", labels=("[1]", "[2]"), query_marker='"',
         item_text="{title} {abstract}", item_example='"{title}"',
         pair_input="Generate a title for the following abstract of a paper: {abstract}", pair_output="title",
         description="citation identification: title + two candidates -> [1] or [2]"),
    Task("LaMP-2", "classification", "LaMP_2", labels=LAMP2_TAGS, query_marker="description:",
         label_marker="tags:", item_text="{tag}: {description}",
         item_example='the tag for the movie "{description}" is "{tag}"',
         pair_input=("Which tag does this movie relate to among the following tags? Just answer with the tag "
                     f"name without further explanation. tags: [{', '.join(LAMP2_TAGS)}] "
                     "description: {description}"), pair_output="tag",
         description="movie tagging: description -> one of 15 tags"),
    Task("LaMP-2N", "classification", "LaMP_2N", labels=LAMP2N_CATEGORIES,
         pair_input=_category_prompt(LAMP2N_CATEGORIES), **_NEWS_CATEGORY,
         description="news categorization (older LaMP releases): article -> one of 15 categories"),
    Task("LaMP-3", "rating", "LaMP_3", labels=RATINGS, query_marker="review:", item_text="{score}: {text}",
         item_example='{score} is the score for "{text}"',
         pair_input=("What is the score of the following review on a scale of 1 to 5? just answer with "
                     "1, 2, 3, 4, or 5 without further explanation. review: {text}"), pair_output="score",
         description="product rating: review -> 1..5"),
    Task("LaMP-4", "generation", "LaMP_4", **_NEWS_HEADLINE, description="news headline: article -> headline"),
    Task("LaMP-5", "generation", "LaMP_5", **_PAPER, description="scholarly title: abstract -> title"),
    Task("LaMP-6", "generation", "LaMP_6", item_text="{text} {title}", item_example='"{title}" is the subject '
         'for "{text}"', pair_input="Generate a subject for the following email: {text}", pair_output="title",
         query_marker="email:", description="email subject (not public): email -> subject"),
    Task("LaMP-7", "generation", "LaMP_7", item_text="{text}", item_example='"{text}"',
         pair_input="Paraphrase the following tweet without any explanation before or after it: {text}",
         pair_output="text", query_marker="before or after it:",
         description="tweet paraphrasing: tweet -> tweet in the user's style"),
    Task("scholarly_title", "generation", "LaMP_5", **_PAPER,
         description="real: ACL Anthology abstract -> title (LaMP-5-shaped)"),
    Task("news_headline", "generation", "LaMP_4", **_NEWS_HEADLINE,
         description="real: HuffPost article -> headline (LaMP-4-shaped)"),
    Task("news_categorize", "classification", "LaMP_2N", labels=HUFFPOST_CATEGORIES,
         pair_input=_category_prompt(HUFFPOST_CATEGORIES), **_NEWS_CATEGORY,
         description="real: HuffPost article -> one of 15 categories (LaMP-2N-shaped)"),
    Task("synth_topic", "classification", "synth_topic", labels=SYNTH_TOPICS, query_marker="note:",
         label_marker="categories:", item_text="{category}: {text}",
         item_example='the category for the note "{text}" is "{category}"',
         pair_input=("Which category does this note belong to among the following categories? Just answer "
                     f"with the category name. categories: [{', '.join(SYNTH_TOPICS)}] note: {{text}}"),
         pair_output="category", description="synthetic: neutral note -> the user's preferred category"),
    Task("synth_title", "generation", "synth_title", item_text="{text} {title}",
         item_example='"{title}" is a title for "{text}"',
         pair_input="Generate a title for the following article: {text}", pair_output="title",
         query_marker="article:", description="synthetic: article -> title in the user's fixed style"),
):
    register_task(_t)
