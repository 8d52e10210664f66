"""OpenAI-style server-sent events for ``POST /v1/chat/completions`` with ``stream: true``.

The stream is: a first chunk with ``delta.role`` (sent at once, so the client knows the request was
accepted while it waits in the batch queue), one chunk with the whole text as ``delta.content`` (a
micro-batch generates all its outputs together, so text arrives when the batch is done), a last chunk with
``finish_reason``, optionally a usage chunk (``stream_options.include_usage``), then ``data: [DONE]``.
A failure after the stream started is sent as ``data: {"error": {...}}`` (what OpenAI clients raise on).
When the client disconnects, Starlette cancels the stream and with it the queued job.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from pplug.server.errors import ApiError


def event_stream(events: AsyncIterator[dict[str, Any] | str]) -> StreamingResponse:
    """A ``text/event-stream`` response of ``data:`` lines, one per event (a str is sent as is)."""

    async def lines() -> AsyncIterator[bytes]:
        async for e in events:
            data = e if isinstance(e, str) else json.dumps(e, ensure_ascii=False)
            yield f"data: {data}\n\n".encode()

    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def chat_chunks(cid: str, created: int, model: str, result: Callable[[], Awaitable[Any]],
                      include_usage: bool = False) -> AsyncIterator[dict[str, Any] | str]:
    """The ``chat.completion.chunk`` events of one completion; ``result()`` queues the job and resolves to a
    ``Personalized`` (called only once the first chunk went out)."""

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}

    yield chunk({"role": "assistant", "content": ""})
    try:
        r = await result()
    except ApiError as e:
        yield {"error": {"type": "server_error" if e.status >= 500 else "invalid_request", "code": e.status,
                         "message": e.message}}
        return
    p = r.prediction
    yield chunk({"content": p.output})
    yield chunk({}, "stop", pplug={"explanation": p.explanation, "batch_size": r.batch_size,
                                   "history_size": r.history_size})
    if include_usage:
        yield {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
               "usage": {"prompt_tokens": p.prompt_tokens, "completion_tokens": r.completion_tokens,
                         "total_tokens": p.prompt_tokens + r.completion_tokens}}
    yield "[DONE]"
