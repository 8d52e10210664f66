"""Deterministic synthetic LaMP-format tasks where personalization demonstrably matters.

``synth_topic`` (classification, like LaMP-2N): notes are label-neutral, but each user's items carry
her favorite category with probability ``favorite_prob``. ``synth_title`` (generation, like LaMP-5/4):
the base title is the four words after "that the" in the article, while each user's fixed style
(casing, prefix/suffix) shows only in her profile. Output is byte-for-byte deterministic per seed.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYNTH_TASKS = ("synth_topic", "synth_title")
SYNTH_TOPIC_LABELS = ("sports", "music", "science", "travel", "food", "politics")
SPLITS = ("train", "dev", "test")
TOPIC_PROMPT = (
    "Which category does this note belong to among the following categories? Just answer with the category "
    f"name. categories: [{', '.join(SYNTH_TOPIC_LABELS)}] note: "
)
TITLE_PROMPT = "Generate a title for the following article: "
_Maker = Callable[[], tuple[str, str]]  # draws one (text, output) pair from a user's personal distribution


# Label-neutral vocabulary shared by every category of synth_topic ('|'-separated).
_T_SUBJECTS = "a friend|my neighbor|a coworker|my cousin|an old classmate|my sister|my uncle".split("|")
_T_VERBS = "mentioned|talked about|asked about|shared thoughts on|kept thinking about|wrote about".split("|")
_T_ADJS = "quiet long short simple unusual busy early recent small familiar".split()
_T_NOUNS = "plans idea story afternoon question weekend conversation change schedule meeting decision".split()
_T_TAILS = (
    "near the old house|after lunch|on a rainy day|before the holidays|during a long walk|in the evening|"
    "on the way home|last week|over the phone|with a smile"
).split("|")
# Vocabulary of synth_title articles; the base title is "<adj> <noun> <verb> <obj>".
_A_OPENERS = (
    "researchers reported|officials said|a new study found|local reporters noted|experts confirmed|"
    "a short memo showed|sources told us|residents learned"
).split("|")
_A_ADJS = "new small cheap local fast quiet old green bright smart rare young".split()
_A_NOUNS = "battery bridge garden robot library ferry museum farm bakery studio rocket clinic market".split()
_A_VERBS = "charges opens wins fails grows returns expands closes moves improves attracts reaches".split()
_A_OBJS = "homes tourists students records funding awards crowds investors visitors critics fans".split()
_A_CLOSERS = (
    "near the coast|this week|after a long delay|according to early data|in several cities|"
    "for the first time|despite the rain|before the summer"
).split("|")


@dataclass(frozen=True)
class TitleStyle:
    """A user's title habit: a casing applied to the base words plus a fixed prefix and suffix."""

    casing: str  # one of "upper", "lower", "title", "sentence"
    prefix: str = ""  # prepended verbatim, e.g. "Breaking: "
    suffix: str = ""  # appended verbatim, e.g. " - report"


_CASINGS = ("upper", "lower", "title", "sentence")
_AFFIXES = (("", ""), ("Breaking: ", ""), ("Update: ", ""), ("Watch: ", ""), ("", " !"), ("", " - report"))
# Every casing x affix combination except the unstyled one (plain lower case), so each style is visible.
TITLE_STYLES = tuple(TitleStyle(c, p, s) for c in _CASINGS for p, s in _AFFIXES if c != "lower" or p or s)


@dataclass
class SynthConfig:
    """Sizes and knobs of the synthetic tasks."""

    seed: int = 0  # master seed; each task draws from random.Random(f"{seed}:{task}")
    n_train_users: int = 48  # users in the train split
    n_dev_users: int = 12  # users in the dev split
    n_test_users: int = 12  # users in the test split
    train_questions_per_user: int = 3  # questions asked of each train user
    eval_questions_per_user: int = 2  # questions asked of each dev/test user
    min_profile: int = 6  # fewest profile items of any question
    max_profile: int = 16  # most profile items of any question (older ones are dropped beyond it)
    favorite_prob: float = 0.8  # chance a synth_topic item carries the user's favorite label
    start_date: str = "2016-01-01"  # earliest possible date of a user's first item (ISO)
    max_gap_days: int = 21  # consecutive events of a user are 1..max_gap_days days apart


def user_majority_label(profile: list[dict], field: str) -> str | None:
    """Most frequent value of ``field`` in a profile; ties go to the value seen most recently.

    Args:
        profile: profile items (dicts with a ``"date"`` and the field).
        field: the item key holding the label, e.g. ``"category"``.

    Returns:
        The majority value, or None when no item has the field.
    """
    ordered = sorted(enumerate(profile), key=lambda p: (str(p[1].get("date", "")), p[0]))
    values = [item[field] for _, item in ordered if field in item]
    counts, last = Counter(values), {v: rank for rank, v in enumerate(values)}
    return max(counts, key=lambda v: (counts[v], last[v])) if counts else None


def base_title(article: str) -> str:
    """The unstyled title of a synth_title article: the four words after "that the", in lower case.

    Args:
        article: the article text (the task prompt in front of it is allowed).

    Returns:
        The base title, e.g. "new battery charges homes".
    """
    words = [w.strip(".,!?:;").lower() for w in article.split()]
    i = words.index("that") + 1
    if i < len(words) and words[i] == "the":
        i += 1
    return " ".join(words[i : i + 4])


def apply_style(words: str | Sequence[str], style: TitleStyle) -> str:
    """Render base-title words in a user's style.

    Args:
        words: the base title as a string or a sequence of words.
        style: the casing and prefix/suffix to apply.

    Returns:
        The styled title.
    """
    ws = [w.lower() for w in (words.split() if isinstance(words, str) else words)]
    if style.casing == "upper":
        ws = [w.upper() for w in ws]
    elif style.casing == "title":
        ws = [w.capitalize() for w in ws]
    elif style.casing == "sentence":
        ws = [w.capitalize() if i == 0 else w for i, w in enumerate(ws)]
    elif style.casing != "lower":
        raise ValueError(f"unknown casing {style.casing!r}")
    return f"{style.prefix}{' '.join(ws)}{style.suffix}"


def infer_style(title: str, words: str | Sequence[str]) -> TitleStyle | None:
    """Recover the style that turns ``words`` into ``title`` (plain lower case included).

    Args:
        title: a styled title, e.g. a profile item's ``"title"``.
        words: its base title, e.g. ``base_title(item["text"])``.

    Returns:
        The first matching style, or None when no known style matches.
    """
    return next((s for s in (TitleStyle("lower"), *TITLE_STYLES) if apply_style(words, s) == title), None)


def _topic_text(rng: random.Random) -> str:
    """A label-neutral note of about 10-20 words."""
    subject, verb, adj, noun = (rng.choice(v) for v in (_T_SUBJECTS, _T_VERBS, _T_ADJS, _T_NOUNS))
    text = f"{subject} {verb} the {adj} {noun} {rng.choice(_T_TAILS)}"
    return text + f" and it felt {rng.choice(_T_ADJS)}" if rng.random() < 0.5 else text


def _article(rng: random.Random) -> str:
    """A short article whose base title is the four words after "that the"."""
    key = " ".join(rng.choice(v) for v in (_A_ADJS, _A_NOUNS, _A_VERBS, _A_OBJS))
    return f"{rng.choice(_A_OPENERS)} that the {key} {rng.choice(_A_CLOSERS)}."


def _user_questions(
    rng: random.Random, cfg: SynthConfig, user_id: str, n_q: int, make: _Maker, field: str, prompt: str
) -> tuple[list[dict], list[dict]]:
    """One user's (questions, golds), oldest first; each profile holds only items older than its question."""
    first = rng.randint(cfg.min_profile, max(cfg.min_profile, cfg.max_profile - 2 * (n_q - 1)))
    day = dt.date.fromisoformat(cfg.start_date) + dt.timedelta(days=rng.randint(0, 3 * 365))
    items: list[dict] = []
    questions: list[dict] = []
    golds: list[dict] = []

    def add_item(text: str, out: str) -> None:
        nonlocal day
        item_id = f"{user_id}-p{len(items):02d}"
        items.append({"id": item_id, "date": day.isoformat(), "text": text, field: out})
        day += dt.timedelta(days=rng.randint(1, cfg.max_gap_days))

    for q in range(n_q):
        for _ in range(first if q == 0 else rng.randint(0, 1)):
            add_item(*make())
        text, out = make()
        qid = f"{user_id}-q{q}"
        profile = [dict(it) for it in items[-cfg.max_profile :]]
        questions.append({"id": qid, "user_id": user_id, "input": prompt + text, "profile": profile})
        golds.append({"id": qid, "output": out})
        add_item(text, out)  # the answered question joins the history of the user's later questions
    return questions, golds


def _build_task(task: str, cfg: SynthConfig) -> dict[str, tuple[list[dict], list[dict]]]:
    """All splits of one task as {split: (questions, golds)}; favorites/styles are balanced per split."""
    rng = random.Random(f"{cfg.seed}:{task}")
    sizes = {"train": cfg.n_train_users, "dev": cfg.n_dev_users, "test": cfg.n_test_users}
    topic = task == "synth_topic"
    traits_pool: Sequence[Any] = SYNTH_TOPIC_LABELS if topic else TITLE_STYLES
    fields = ("category", TOPIC_PROMPT) if topic else ("title", TITLE_PROMPT)
    result: dict[str, tuple[list[dict], list[dict]]] = {}
    n_users = 0
    for split in SPLITS:
        n_q = cfg.train_questions_per_user if split == "train" else cfg.eval_questions_per_user
        traits = [traits_pool[i % len(traits_pool)] for i in range(sizes[split])]
        rng.shuffle(traits)
        questions, golds = result[split] = ([], [])
        for trait in traits:
            user_id = f"{task.removeprefix('synth_')}-u{n_users:03d}"
            n_users += 1

            def make(trait: Any = trait) -> tuple[str, str]:
                if topic:
                    others = [lab for lab in SYNTH_TOPIC_LABELS if lab != trait]
                    return _topic_text(rng), trait if rng.random() < cfg.favorite_prob else rng.choice(others)
                article = _article(rng)
                return article, apply_style(base_title(article), trait)

            qs, gs = _user_questions(rng, cfg, user_id, n_q, make, *fields)
            questions += qs
            golds += gs
    return result


def synthesize(out_dir: str | Path, config: SynthConfig | None = None) -> dict[str, Path]:
    """Write every synthetic task in LaMP format under ``out_dir`` (one folder per task).

    Args:
        out_dir: parent folder; created when missing.
        config: sizes, seed and knobs; defaults to ``SynthConfig()``.

    Returns:
        {task name: task folder} for every task in ``SYNTH_TASKS``.
    """
    cfg = config or SynthConfig()
    if not (1 <= cfg.min_profile <= cfg.max_profile and 0.0 <= cfg.favorite_prob <= 1.0):
        raise ValueError("need 1 <= min_profile <= max_profile and favorite_prob in [0, 1]")
    folders: dict[str, Path] = {}
    for task in SYNTH_TASKS:
        folder = Path(out_dir) / task
        folder.mkdir(parents=True, exist_ok=True)
        for split, (questions, golds) in _build_task(task, cfg).items():
            for name, payload in (("questions", questions), ("outputs", {"task": task, "golds": golds})):
                text = json.dumps(payload, indent=1, ensure_ascii=False)
                (folder / f"{split}_{name}.json").write_text(text + "\n", encoding="utf-8")
        folders[task] = folder
    return folders
