"""``POST /v1/generate`` and the OpenAI-compatible ``POST /v1/chat/completions`` (+ ``GET /v1/models``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pplug.data.records import Question
from pplug.errors import PPlugError
from pplug.methods import Prediction
from pplug.server.batching import QueueFull, TenantQueueFull
from pplug.server.deps import ServerState, State, Tenant
from pplug.server.errors import ApiError, log
from pplug.server.routes_items import not_found
from pplug.server.runtime import BatchKey, TaskModel, profile_tensor, task_key
from pplug.server.schemas import ChatRequest, Explanation, GenerateRequest, GenerateResponse, TaskInfo
from pplug.server.sse import chat_chunks, event_stream
from pplug.server.store import NotFound

router = APIRouter(prefix="/v1", tags=["generate"])


@dataclass
class Personalized:
    prediction: Prediction
    completion_tokens: int
    batch_size: int
    history_size: int


async def _check_input(st: ServerState, m: TaskModel, text: str, max_new_tokens: int | None,
                       num_beams: int | None, param: str, tokens_param: str) -> None:
    """Input length (413), max_new_tokens (422) and the request's cost (413) against the server's limits."""
    if len(text) > st.config.max_input_chars:
        raise ApiError(413, f"input has {len(text)} characters; the limit is {st.config.max_input_chars} "
                            "(max_input_chars)", param)
    if max_new_tokens is not None and max_new_tokens > st.config.max_new_tokens_limit:
        raise ApiError(422, f"{tokens_param}={max_new_tokens} is above the server's limit "
                            f"{st.config.max_new_tokens_limit}", tokens_param)
    cost = await run_in_threadpool(m.cost, text, max_new_tokens, num_beams)
    if cost.total > st.config.max_request_cost:
        raise ApiError(413, cost.explain(st.config.max_request_cost), param)


@dataclass
class Pending:
    """A request queued for the model: await ``result()`` (raises ApiError on every failure)."""

    st: ServerState
    tenant: int
    key: BatchKey
    payload: tuple[Question, Any]
    history_size: int

    async def result(self) -> Personalized:
        timeout = self.st.config.request_timeout_s
        try:
            (pred, n_gen), batch = await self.st.batcher.submit(self.key, self.payload, self.tenant, timeout)
        except TenantQueueFull as e:
            raise ApiError(429, str(e), headers={"Retry-After": "1"}) from None
        except QueueFull as e:
            raise ApiError(503, str(e), headers={"Retry-After": "1"}) from None
        except TimeoutError:
            raise ApiError(504, f"no result within {timeout:g} s (request_timeout_s); the request was dropped: "
                                "retry with a shorter input or fewer tokens") from None
        except PPlugError as e:
            raise ApiError(422, str(e)) from None
        except Exception as e:
            log.exception("generation failed")
            raise ApiError(500, f"generation failed: {type(e).__name__}: {e}") from None
        return Personalized(pred, n_gen, batch, self.history_size)


async def prepare(st: ServerState, tenant: int, m: TaskModel, user_id: str, text: str,
                  max_new_tokens: int | None, num_beams: int | None, persona: str = "own") -> Pending:
    """Read the stored profile embeddings of the persona's user (``own``: ``user_id``; ``user:<id>``: that
    user; ``none``: no history) and build the model job (not queued yet)."""
    items, vecs = [], np.zeros((0, 0), dtype=np.float32)
    try:
        if persona == "none":
            await run_in_threadpool(st.store.user_info, tenant, user_id)  # the user must exist all the same
        else:
            of = user_id if persona == "own" else persona.removeprefix("user:")
            items, vecs = await run_in_threadpool(st.store.profile, tenant, of, m.space, m.max_history)
    except NotFound as e:
        raise (ApiError(404, str(e), "persona") if e.id != user_id else not_found(e)) from None
    question = Question(id=uuid.uuid4().hex, input=text, profile=items, user_id=user_id)
    key = BatchKey(task_key(m.task.name), max_new_tokens, num_beams)
    return Pending(st, tenant, key, (question, profile_tensor(m, vecs)), len(items))


async def unless_disconnected(request: Request, pending: Pending) -> Personalized:
    """``pending.result()``, cancelled (the job dropped, or its batch told to stop) if the client goes away."""
    work = asyncio.ensure_future(pending.result())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()
        gone.cancel()
        raise
    gone.cancel()
    if work not in done:
        work.cancel()  # drops the queued job (or stops its batch once nobody waits for it) ...
        await asyncio.wait({work})  # ... once the cancellation reached it
        raise ApiError(499, "the client closed the request; its generation was cancelled")
    return work.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get("/tasks", response_model=list[TaskInfo], tags=["tasks"])
async def tasks(st: State, _: Tenant) -> list[TaskInfo]:
    """The served tasks and the item fields each needs."""
    return [TaskInfo(name=m.task.name, kind=m.task.kind, item_fields=list(m.task.item_fields), run=m.run)
            for m in st.models.values()]


@router.post("/generate", response_model=GenerateResponse,
             responses={404: {"description": "unknown user or task"}, 413: {"description": "input too long"}})
async def generate(body: GenerateRequest, request: Request, st: State, tenant: Tenant) -> GenerateResponse:
    """Personalized output for one user, with the history items the plug weighted most (the explanation).
    ``persona`` answers the same input without a persona (``none``) or with another user's (``user:<id>``)."""
    t0 = time.perf_counter()
    m = st.model(body.task)
    await _check_input(st, m, body.input, body.max_new_tokens, body.num_beams, "input", "max_new_tokens")
    pending = await prepare(st, tenant, m, body.user_id, body.input, body.max_new_tokens, body.num_beams,
                            body.persona)
    r = await unless_disconnected(request, pending)
    p = r.prediction
    return GenerateResponse(user_id=body.user_id, task=m.task.name, output=p.output, raw=p.raw,
                            explanation=[Explanation(**e) for e in p.explanation],
                            latency_ms=round((time.perf_counter() - t0) * 1000, 2), batch_size=r.batch_size,
                            history_size=r.history_size, prompt_tokens=p.prompt_tokens, persona=body.persona)


def _last_user_text(body: ChatRequest) -> str:
    for msg in reversed(body.messages):
        if msg.role != "user" or msg.content is None:
            continue
        if isinstance(msg.content, str):
            text = msg.content
        else:
            text = "\n".join(p.text for p in msg.content if p.type == "text" and p.text)
        if text.strip():
            return text
    raise ApiError(422, "no user message with text content: the last user message is the task input", "messages")


@router.post("/chat/completions", tags=["openai"])
async def chat_completions(body: ChatRequest, request: Request, st: State, tenant: Tenant) -> Any:
    """OpenAI-compatible: ``model`` is a served task, ``user`` the user to personalize for, and the last user
    message the task input. Decoding is deterministic; sampling options are ignored. ``stream: true``
    answers with server-sent events (``chat.completion.chunk``; the text arrives as one delta once the
    batch that generates it finished)."""
    t0 = time.perf_counter()
    if body.user is None:
        raise ApiError(422, "set 'user' to the id of the user to personalize for", "user")
    m = st.model(body.model, "model")
    text = _last_user_text(body)
    max_new = body.max_completion_tokens or body.max_tokens
    await _check_input(st, m, text, max_new, None, "messages",
                       "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
    pending = await prepare(st, tenant, m, body.user, text, max_new, None)
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return event_stream(chat_chunks(cid, created, m.task.name, pending.result, usage))
    r = await unless_disconnected(request, pending)
    p = r.prediction
    return {"id": cid, "object": "chat.completion", "created": created, "model": m.task.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": p.output}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": p.prompt_tokens, "completion_tokens": r.completion_tokens,
                      "total_tokens": p.prompt_tokens + r.completion_tokens},
            "pplug": {"explanation": p.explanation, "batch_size": r.batch_size, "history_size": r.history_size,
                      "latency_ms": round((time.perf_counter() - t0) * 1000, 2)}}


@router.get("/models", tags=["openai"])
async def models(st: State, _: Tenant) -> dict[str, Any]:
    """OpenAI-compatible model list: one model per served task."""
    return {"object": "list", "data": [{"id": m.task.name, "object": "model", "owned_by": "pplug"}
                                       for m in st.models.values()]}
