"""Settings whose best value depends on the task kind (classification, rating, generation).

A config field left at ``None`` in the dataclass ("per task kind") takes its kind's value from `PER_KIND`
once the task is known: `resolve_per_kind` runs before a run's ``config.json`` is written and whenever a
method is built, so saved configs always hold concrete values, and an explicit ``--set`` always wins.

Every value here was chosen by a dev sweep recorded in README "Defaults" (commands and figures there):

- ``plug.placement``: soft tokens after the text (its KV cache computed once, without gradient) train ~3-4x
  faster and score within noise of ``before_text`` on classification dev; on generation dev (news_headline)
  ``before_text`` scored higher, so generation keeps the paper's placement.
- ``plug.train_input_encoder``: a frozen input encoder is within noise on classification dev and lets query
  vectors be cached; generation keeps the paper's trained one (not swept).
- ``train.bucket``: length bucketing (less padding) measured with the classification settings above.
- ``train.epochs``: classification dev kept improving past the paper's 2 epochs (news_categorize LLM-alone
  dev .718 after 3 epochs of augmented data; the demo's synth_topic dev .667 with 3 vs .583 with 2);
  generation keeps the paper's 2 (a second epoch is what made news_headline's swap test drop), rating the
  paper's 1.
- ``decode.label_prior``: label tasks combine the LLM's label scores with the user's own label prior, its
  weight chosen on dev after training (``auto``; weight 0, the LLM alone, is one of the candidates), for
  `PRIOR_METHODS` only (the ``no_persona`` ablation and the non-personalized baselines keep 0).
- ``decode.label_shift``: the LLM's own label marginal divided out (Bayes' prior shift), its weight chosen on dev
  with the prior (``auto``; 0 is a candidate and wins ties), same methods: news_categorize dev +1 question for
  both PPlug (full-size run) and rag-bm25 (README "The user's label prior"; on test it helped PPlug and hurt
  rag-bm25).
- ``decode.vocab_prior``: generation biases decoding toward the tokens the user's own past outputs use more than
  users in general (`pplug.vocab_prior`), its weight chosen on dev after training (``auto``; 0 is a candidate and
  wins ties; chosen on ``decode.tune_limit`` dev questions), for `VOCAB_METHODS` only (it needs the background
  counted at training): scholarly_title dev 96 q ROUGE-1 .286 -> .292 (weight .125) / .290 (.25); on its 637 test
  q .125 gives +.006 [-.001, +.012] and .25 +.014 [+.006, +.022]; news_headline dev 48 q .132 -> .146 (.25) with
  one run, flat on all 89 with another (README "The user's vocabulary prior", "Decoding weights chosen on 96 dev
  questions").
"""

from __future__ import annotations

from typing import Any

from pplug.errors import PPlugError

KINDS = ("classification", "rating", "generation")
_LABEL_TASK = {"plug.placement": "after_text", "plug.train_input_encoder": False, "train.bucket": 4,
               "decode.label_prior": "auto", "decode.label_shift": "auto",
               "decode.vocab_prior": 0.0}
PER_KIND: dict[str, dict[str, Any]] = {
    "classification": {**_LABEL_TASK, "train.epochs": 3},
    "rating": {**_LABEL_TASK, "train.epochs": 1},  # the paper's rating setting (not swept here: no rating data)
    "generation": {"plug.placement": "before_text", "plug.train_input_encoder": True, "train.bucket": 0,
                   "decode.label_prior": 0.0, "decode.label_shift": 0.0, "decode.vocab_prior": "auto",
                   "train.epochs": 2},
}
PER_KIND_FIELDS = tuple(PER_KIND["generation"])
# the label prior's default applies to the methods that choose its weight on dev and read the history; zero-shot
# and task-lora stay non-personalized, OPPU's per-user adapters are not re-scored on dev (set it by hand there)
PRIOR_METHODS = ("pplug", "pplug-rag", "rag-bm25", "rag-dense", "rag-recency")
VOCAB_METHODS = ("pplug", "pplug-rag")  # the vocabulary prior's background is counted when PPlug trains


def per_kind_help(field: str) -> str:
    """``--help`` text for a per-kind default, e.g. ``classification: after_text, generation: before_text``."""
    return ", ".join(f"{kind}: {str(PER_KIND[kind][field]).lower()}" for kind in KINDS)


def resolve_per_kind(config: Any, kind: str | None = None) -> dict[str, Any]:
    """Fill every per-kind field still ``None`` in ``config`` (a RunConfig) with its task kind's value.

    Args:
        kind: the task kind; default: the kind of the registered task ``config.task``.

    Returns:
        {field: value} of the fields it filled (empty when all were set).
    """
    if kind is None:
        from pplug.tasks import get_task

        if not config.task:
            raise PPlugError("config.task is not set: per-kind defaults need the task (resolve it from the data)")
        kind = get_task(config.task).kind
    if kind not in PER_KIND:
        raise PPlugError(f"unknown task kind '{kind}': one of {list(PER_KIND)}")
    if config.decode.vocab_prior not in (None, 0, 0.0) and config.method not in VOCAB_METHODS:
        raise PPlugError(f"decode.vocab_prior={config.decode.vocab_prior} needs a vocabulary background, which only "
                         f"{' and '.join(VOCAB_METHODS)} count when they train; method '{config.method}' has none "
                         "(leave decode.vocab_prior unset or 0)")
    filled = {}
    for dotted, value in PER_KIND[kind].items():
        no_prior = config.method not in PRIOR_METHODS or config.plug.ablation == "no_persona"
        if dotted in ("decode.label_prior", "decode.label_shift") and no_prior:
            value = 0.0  # the prior is the user's history: it would personalize a non-personalized baseline
        if dotted == "decode.vocab_prior" and (no_prior or config.method not in VOCAB_METHODS):
            value = 0.0
        section, name = dotted.split(".")
        target = getattr(config, section)
        if getattr(target, name) is None:
            setattr(target, name, value)
            filled[dotted] = value
    return filled
