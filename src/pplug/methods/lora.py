"""Fine-tuned baselines with LoRA: ``task-lora`` (one adapter for the task) and OPPU (one adapter per user).

``task-lora`` / ``task-lora-rag``: one peft LoRA on the backbone, trained on all training questions
(prompt -> gold; the ``-rag`` variant puts the k retrieved profile items in the prompt), best dev
epoch kept, saved under ``run_dir/task_lora/``.

``oppu`` / ``oppu-rag`` (One PEFT Per User): the task LoRA above, merged into the backbone, then per
user a fresh LoRA trained only on that user's own history items (``Task.item_pair``; LaMP-7-style
tasks: language modelling on her own text, see `language_modelling`), loss on the output only, saved
under ``run_dir/users/<user>/``. Test users are unknown at fit time, so users are onboarded lazily in
``predict``. Leakage rule: a user's adapter sees only the items present in EVERY
one of her questions' profiles, so no question's own gold (which joins her later profiles) is seen.
``oppu-rag`` trains with the top-1 item strictly older than the trained item and predicts with the
top-k of the whole profile.

Optimization follows OPPU's code, not PPlug's ``train`` settings: the task stage uses ``lora.task_*``
(3 epochs, lr 1e-4, q/k/v, clip 0.3), each user ``lora.user_*`` (2 epochs, lr 1e-4, q/v, clip 0.3).

peft injects layers in place, so every instance loads its own backbone (never a shared one).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import peft
import torch
from safetensors.torch import load_file

from pplug.backbones import Backbone, PromptParts, load_backbone
from pplug.config import LORA_METHODS, LoraConfig, RunConfig
from pplug.data.records import HistoryItem, Question, Split
from pplug.devices import resolve_device
from pplug.errors import PPlugError
from pplug.methods.base import Prediction, register_method
from pplug.methods.baselines import RagPrompter, generate_predictions
from pplug.metrics import HIGHER_IS_BETTER, MAIN_METRIC
from pplug.progress import bar_items
from pplug.resources import Resources
from pplug.retrieval import build_retriever
from pplug.runfiles import copy_tree
from pplug.scoring import score_predictions
from pplug.tasks import Task, get_task
from pplug.training import TrainConfig, set_seed, train_loop

TASK_DIR = "task_lora"  # run_dir/task_lora/: the task adapter (adapter_config.json + safetensors weights)
USERS_DIR = "users"  # run_dir/users/<safe user key>/: one OPPU adapter per user + meta.json
ADAPTER_FILE = "adapter_model.safetensors"
META_FILE = "meta.json"


# ---- peft plumbing --------------------------------------------------------------------------------
def target_modules(model: torch.nn.Module, wanted: Sequence[str]) -> list[str]:
    """The names in ``wanted`` that are leaf names of modules in ``model`` (Llama ``q_proj``, T5 ``q``).

    Raises:
        PPlugError: none of them exists (the message lists the model's linear layer names).
    """
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    kept = [w for w in wanted if w in leaves]
    if not kept:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        raise PPlugError(f"none of the LoRA target modules {list(wanted)} exists in {type(model).__name__}; "
                         f"its linear layers are named {linear} (set lora.target_modules)")
    return kept


def attach_lora(model: torch.nn.Module, cfg: LoraConfig, seed: int, targets: Sequence[str] | None = None,
                ) -> peft.PeftModel:
    """Inject a fresh LoRA (A random, B = 0: the model's outputs are unchanged) into ``model`` in place.

    Args:
        model: a frozen HF model (modified in place; ``unload`` / ``merge_and_unload`` restore it).
        cfg: rank, alpha, dropout and (per-user) target module names.
        seed: seeds the A initialization.
        targets: target module names instead of ``cfg.target_modules`` (the task stage's q/k/v).

    Returns:
        the peft wrapper; only the LoRA parameters require grad.
    """
    set_seed(seed)
    pcfg = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=target_modules(model, targets or cfg.target_modules))
    wrapped = quiet(peft.get_peft_model, model, pcfg)
    wrapped.eval()
    return wrapped


def quiet(fn, *args, **kwargs):
    """Call a peft entry point without its transformers-5 deprecation warning (is_gradient_checkpointing)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return fn(*args, **kwargs)


def n_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def pairs_loss(backbone: Backbone, pairs: Sequence[tuple[str, str]], task: Task | None = None) -> torch.Tensor:
    """Token-mean NLL of the outputs given the prompts (loss on the output tokens only; ``task`` tells
    truncation where each prompt's body starts)."""
    parts = [PromptParts(text=t, body_start=task.body_start(t) if task else 0) for t, _ in pairs]
    built = backbone.build(parts, targets=[g for _, g in pairs])
    return backbone.loss(built)


# ---- per-user data --------------------------------------------------------------------------------
def user_items(questions: Sequence[Question]) -> list[HistoryItem]:
    """The items (by id) present in EVERY profile of one user's questions, in her first question's order.

    A user's later profiles contain her earlier questions' answered items; the intersection (her
    earliest profile, minus items dropped by a profile cap) never contains any question's own gold.
    """
    if not questions:
        return []
    common = set.intersection(*({it.id for it in q.profile} for q in questions))
    return [it for it in questions[0].profile if it.id in common]


def language_modelling(task: Task) -> bool:
    """True when an item's task pair would show its own output in the input (LaMP-7: "Paraphrase ...: X"
    -> "X"): such pairs teach copying, so OPPU trains the user's adapter by language modelling on her
    own text instead (an empty prompt, loss on the text)."""
    return task.pair_output in re.findall(r"{(\w+)", task.pair_input)


def user_examples(task: Task, questions: Sequence[Question], prompter: RagPrompter | None = None,
                  ) -> list[tuple[str, str]]:
    """One user's OPPU training pairs (prompt, output) from her leak-free items (see `user_items`).

    Language-modelling tasks (see `language_modelling`) give ("", her text) per item, with no retrieved
    item (OPPU's code does the same for LaMP-7).

    Args:
        task: turns an item into a task example (``Task.item_pair``).
        questions: all questions of ONE user.
        prompter: ``oppu-rag``: a k=1 prompter; each prompt then shows the top item strictly older than
            the trained item (by date; undated items: those before it in profile order).

    Returns:
        (prompt text, output) per item.
    """
    keys = {q.user_key for q in questions}
    if len(keys) > 1:
        raise ValueError(f"user_examples takes the questions of one user, got users {sorted(keys)}")
    items = user_items(questions)
    if language_modelling(task):
        return [("", task.item_pair(item)[1]) for item in items]
    out = []
    for j, item in enumerate(items):
        text, gold = task.item_pair(item)
        if prompter is None:
            out.append((task.prompt(text), gold))
            continue
        if item.date is None:  # undated: the items before it in profile order
            pool, before = items[:j], None
        else:
            pool, before = [o for o in items if o.id != item.id], item.date
        out.append((prompter.text(Question(item.id, text, pool), before=before), gold))
    return out


def user_dir_name(user: str) -> str:
    """A filesystem-safe, collision-free folder name for a user key."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", user)[:60]
    return f"{clean}-{hashlib.sha1(user.encode()).hexdigest()[:8]}"


def adapter_bytes(run_dir: str | Path) -> dict[str, int]:
    """{user key: size in bytes of her saved OPPU adapter file} for every adapter under ``run_dir/users``."""
    out = {}
    for meta_path in sorted((Path(run_dir) / USERS_DIR).glob(f"*/{META_FILE}")):
        weights = meta_path.parent / ADAPTER_FILE
        if weights.is_file():
            out[json.loads(meta_path.read_text())["user"]] = weights.stat().st_size
    return out


# ---- the method -----------------------------------------------------------------------------------
class LoraMethod:
    """``task-lora[-rag]`` (``per_user=False``) and ``oppu[-rag]`` (``per_user=True``).

    Attributes:
        user_seconds: OPPU: seconds spent training each user's adapter in this process.
        last_report: OPPU: which users the last ``predict`` personalized, trained, reused or left out.
    """

    def __init__(self, config: RunConfig, resources: Resources | None, per_user: bool, rag: bool):
        self.config, self.name, self.per_user, self.rag = config, config.method, per_user, rag
        self.task = get_task(config.task)
        self.device = resolve_device(config.device)
        self.backbone = load_backbone(config.backbone, self.device)  # our own copy: peft mutates it in place
        self.state = "base"  # base | task (LoRA attached) | merged (OPPU: task LoRA merged in)
        self.adapter: peft.PeftModel | None = None
        self.run_dir: Path | None = None
        retriever = None
        if rag:
            r = config.retrieval.retriever
            encoder = (resources or Resources()).encoder(config.encoder, self.device) if r == "dense" else None
            retriever = build_retriever(r, self.task, encoder)
        tok, ret = self.backbone.tokenizer, config.retrieval
        self.prompter = RagPrompter(self.task, retriever, ret.k if rag else 0, ret.item_tokens, tok, ret.show)
        self.user_prompter = RagPrompter(self.task, retriever, 1, ret.item_tokens, tok, ret.show) if rag else None
        self.user_seconds: dict[str, float] = {}
        self.last_report: dict[str, list[str]] = {}

    def _fresh_backbone(self) -> None:
        if self.state != "base":
            self.backbone = load_backbone(self.config.backbone, self.device)
            self.adapter, self.state = None, "base"

    def _finish_task_stage(self, adapter: peft.PeftModel) -> None:
        adapter.eval()
        if self.per_user:
            self.backbone.model = adapter.merge_and_unload()
            self.backbone.model.eval()
            self.adapter, self.state = None, "merged"
        else:
            self.adapter, self.state = adapter, "task"

    # ---- task stage -------------------------------------------------------------------------------
    def fit(self, train: Split, dev: Split | None, run_dir: Path) -> dict[str, Any]:
        """Train the task LoRA on all training questions, keep the best dev epoch, save it (OPPU: merge)."""
        cfg, run_dir = self.task_train_config(), Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._fresh_backbone()
        self.run_dir, task_dir = run_dir, run_dir / TASK_DIR
        train = train.limit(cfg.limit)
        dev = dev.limit(cfg.dev_limit) if dev is not None else None
        examples = [(self.prompter.text(q), train.gold(q)) for q in train.questions]
        adapter = attach_lora(self.backbone.model, self.config.lora, cfg.seed, self.config.lora.task_target_modules)
        self.adapter, self.state = adapter, "task"
        metric = MAIN_METRIC[self.task.kind]

        def evaluate() -> float:
            preds = {p.id: p.output for p in self._generate(dev.questions)}
            return score_predictions(self.task, dev.golds, preds)[metric]

        with torch.enable_grad():
            result = train_loop(
                [p for p in adapter.parameters() if p.requires_grad], lambda b: pairs_loss(self.backbone, b, self.task),
                examples, cfg, evaluate=evaluate if cfg.select_on_dev and dev is not None and dev.golds else None,
                higher_is_better=HIGHER_IS_BETTER[metric],
                on_best=lambda: adapter.save_pretrained(str(task_dir)),
                checkpoint=run_dir / "checkpoint" / "task_lora.pt",
                state=lambda: peft.get_peft_model_state_dict(adapter),
                load_state=lambda sd: peft.set_peft_model_state_dict(adapter, sd),
                train_mode=adapter.train, desc=f"{self.name}:task")
        peft.set_peft_model_state_dict(adapter, load_file(str(task_dir / ADAPTER_FILE)))  # best epoch
        report = {"train_examples": len(examples), "trainable_parameters": n_trainable(adapter),
                  "steps": result.steps, "best_epoch": result.best_epoch, "best_dev": result.best_score,
                  "dev_metric": metric, "history": result.history, "train_seconds": round(result.seconds, 2)}
        self._finish_task_stage(adapter)
        if self.per_user:
            report["user_adapters"] = "trained lazily at predict time under users/"
        return report

    def load(self, run_dir: Path) -> None:
        """Load the task adapter saved by ``fit`` (OPPU: merged; user adapters load per user in predict)."""
        task_dir = Path(run_dir) / TASK_DIR
        if not (task_dir / ADAPTER_FILE).is_file():
            raise PPlugError(f"{task_dir}: no task LoRA adapter found (was this run trained with "
                             f"`{self.name}`?)")
        self._fresh_backbone()
        self.run_dir = Path(run_dir)
        self._finish_task_stage(quiet(peft.PeftModel.from_pretrained, self.backbone.model, str(task_dir)))

    def save(self, run_dir: Path) -> None:
        """Copy the task adapter and the per-user adapters (OPPU) of the loaded run into ``run_dir``."""
        if self.run_dir is None:
            raise PPlugError(f"{self.name}: call fit or load before save")
        for sub in (TASK_DIR, USERS_DIR):
            copy_tree(self.run_dir / sub, Path(run_dir) / sub)

    # ---- prediction -------------------------------------------------------------------------------
    def _generate(self, questions: Sequence[Question]) -> list[Prediction]:
        texts = [self.prompter.text(q) for q in questions]
        return generate_predictions(self.backbone, self.task, questions, texts, self.config.decode)

    def predict(self, questions: Sequence[Question]) -> list[Prediction]:
        """Predictions in order; OPPU groups questions by user and uses (training if needed) her adapter."""
        if self.state == "base":
            raise PPlugError(f"{self.name}: call fit or load before predict")
        if not self.per_user:
            return self._generate(questions)
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(questions):
            groups.setdefault(q.user_key, []).append(i)
        limit = self.config.lora.users
        preds: list[Prediction | None] = [None] * len(questions)
        self.last_report = {"personalized": [], "trained": [], "reused": [], "not_personalized": []}
        for user, idx in bar_items(groups.items(), f"{self.name} users"):
            qs = [questions[i] for i in idx]
            adapter, info = None, {"user": user, "adapter": "task", "personalized": False,
                                   "reason": f"beyond the first lora.users={limit} users of this run"}
            if self._may_personalize(user):
                adapter, info = self._user_adapter(user, qs)
            try:
                out = self._generate(qs)
            finally:
                if adapter is not None:
                    self.backbone.model = adapter.unload()
                    self.backbone.model.eval()
            self.last_report["personalized" if adapter is not None else "not_personalized"].append(user)
            for i, p in zip(idx, out, strict=True):
                p.explanation = [dict(info)]
                preds[i] = p
        return preds  # type: ignore[return-value]

    # ---- per-user stage ---------------------------------------------------------------------------
    def _may_personalize(self, user: str) -> bool:
        """``lora.users=N`` is a budget per run folder: a user with a saved adapter always gets it; a new
        user gets one only while fewer than N users have adapters (so later single-question calls, e.g. a
        latency probe, reuse the first N users' adapters instead of training more)."""
        limit = self.config.lora.users
        if limit is None:
            return True
        assert self.run_dir is not None
        users_dir = self.run_dir / USERS_DIR
        if (users_dir / user_dir_name(user) / META_FILE).is_file():
            return True
        return len(list(users_dir.glob(f"*/{META_FILE}"))) < limit

    def onboard_cost(self, questions: Sequence[Question], run_dir: Path) -> tuple[float, int]:
        """task-lora: nothing per user. OPPU: mean seconds to train one user's adapter and mean adapter file size."""
        if not self.per_user:
            return 0.0, 0
        sizes = adapter_bytes(run_dir)
        secs = list(self.user_seconds.values())
        if not secs:
            metas = [json.loads(p.read_text()) for p in (Path(run_dir) / USERS_DIR).glob(f"*/{META_FILE}")]
            secs = [m["train_seconds"] for m in metas]
        if not sizes:
            return (sum(secs) / len(secs) if secs else 0.0), 0
        return (sum(secs) / len(secs) if secs else 0.0), int(sum(sizes.values()) / len(sizes))

    def task_train_config(self) -> TrainConfig:
        """The task stage's optimization: ``lora.task_*`` (OPPU: 3 epochs, lr 1e-4, wd 0.01, warmup 10%,
        clip 0.3) with the run's batch size, limits, dev selection and seed from ``train``."""
        lc = self.config.lora
        return replace(self.config.train, epochs=lc.task_epochs, lr=lc.task_lr, weight_decay=lc.task_weight_decay,
                       warmup=lc.task_warmup, clip=lc.task_clip, augment_copies=0, class_balanced=False)

    def user_train_config(self) -> TrainConfig:
        """The per-user optimization settings (OPPU: 2 epochs, lr 1e-4, wd 0.01, warmup 10%, clip 0.3)."""
        lc, tc = self.config.lora, self.config.train
        return TrainConfig(epochs=lc.user_epochs, lr=lc.user_lr, weight_decay=lc.user_weight_decay,
                           warmup=lc.user_warmup, batch_size=tc.batch_size, grad_accum=1, clip=lc.user_clip,
                           max_steps=tc.max_steps, seed=tc.seed, augment_copies=0, progress=False)

    def _user_adapter(self, user: str, questions: list[Question]) -> tuple[peft.PeftModel | None, dict]:
        """Attach the user's adapter: reused from disk if it saw only still leak-free items, else trained."""
        assert self.run_dir is not None
        folder = self.run_dir / USERS_DIR / user_dir_name(user)
        item_ids = [it.id for it in user_items(questions)]
        info: dict[str, Any] = {"user": user, "adapter": f"{USERS_DIR}/{folder.name}", "personalized": True,
                                "train_items": len(item_ids)}
        if not item_ids:
            return None, {"user": user, "adapter": "task", "personalized": False,
                          "reason": "no history item is shared by all her questions' profiles"}
        meta_path = folder / META_FILE
        if meta_path.is_file() and (folder / ADAPTER_FILE).is_file():
            meta = json.loads(meta_path.read_text())
            if set(meta["item_ids"]) <= set(item_ids):
                self.last_report["reused"].append(user)
                adapter = quiet(peft.PeftModel.from_pretrained, self.backbone.model, str(folder))
                adapter.eval()
                return adapter, {**info, "train_items": len(meta["item_ids"])}
        t0 = time.perf_counter()
        examples = user_examples(self.task, questions, self.user_prompter)
        cfg = self.user_train_config()
        adapter = attach_lora(self.backbone.model, self.config.lora, cfg.seed)
        try:
            with torch.enable_grad():
                train_loop([p for p in adapter.parameters() if p.requires_grad],
                           lambda b: pairs_loss(self.backbone, b, self.task), examples, cfg, train_mode=adapter.train,
                           desc=f"{self.name}:user")
            adapter.eval()
            adapter.save_pretrained(str(folder))
        except BaseException:
            self.backbone.model = adapter.unload()
            self.backbone.model.eval()
            raise
        seconds = time.perf_counter() - t0
        self.user_seconds[user] = seconds
        self.last_report["trained"].append(user)
        meta = {"user": user, "item_ids": item_ids, "examples": len(examples),
                "trainable_parameters": n_trainable(adapter), "train_seconds": round(seconds, 3),
                "base": "the backbone with the task LoRA merged in"}
        meta_path.write_text(json.dumps(meta, indent=1))
        return adapter, info


def _builder(per_user: bool, rag: bool):
    def build(config: RunConfig, resources: Resources | None = None) -> LoraMethod:
        return LoraMethod(config, resources, per_user, rag)

    return build


for _name in LORA_METHODS:
    register_method(_name)(_builder(per_user=_name.startswith("oppu"), rag=_name.endswith("-rag")))
