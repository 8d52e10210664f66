"""Request and response bodies of the HTTP API (pydantic v2); field constraints give field-level 422s."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Scalar = str | int | float | bool
ID_PATTERN = r"^[^\s/]+$"  # user and item ids: no whitespace, no '/'
PERSONA_PATTERN = r"^(own|none|user:[^\s/]+)$"  # whose history a generate request plugs in


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemIn(Strict):
    id: str | None = Field(None, min_length=1, max_length=256, pattern=ID_PATTERN,
                           description="Item id, unique per user (generated when absent; an existing id is replaced).")
    fields: dict[str, Scalar] = Field(min_length=1, description="Task fields, e.g. {'text': ..., 'category': ...}.")
    date: str | None = Field(None, max_length=64, description="ISO date, if known.")


class AddItemsRequest(Strict):
    items: list[ItemIn] = Field(min_length=1, description="Items to append to the user's history (oldest first).")


class AddItemsResponse(BaseModel):
    user_id: str
    item_ids: list[str]
    history_size: int


class ItemOut(BaseModel):
    id: str
    fields: dict[str, Any]
    date: str | None = None


class ItemList(BaseModel):
    user_id: str
    items: list[ItemOut]
    total: int
    limit: int
    offset: int


class UserInfo(BaseModel):
    user_id: str
    history_size: int
    created_at: str


class UserList(BaseModel):
    users: list[UserInfo]
    total: int
    limit: int
    offset: int


class Deleted(BaseModel):
    user_id: str
    deleted_items: int


class DecodeOptions(Strict):
    max_new_tokens: int | None = Field(None, ge=1, description="Generated tokens (default: the run's).")
    num_beams: int | None = Field(None, ge=1, le=8, description="Beam search width (1 = greedy).")


class GenerateRequest(DecodeOptions):
    user_id: str = Field(min_length=1, max_length=256, pattern=ID_PATTERN, description="The user (of your tenant).")
    task: str = Field(min_length=1, max_length=128, description="A served task (GET /v1/tasks).")
    input: str = Field(min_length=1, description="The task input.")
    persona: str = Field("own", max_length=261, pattern=PERSONA_PATTERN,
                         description="Whose history plugs in: 'own' (user_id's), 'none' (no history: the same input "
                                     "without a persona), or 'user:<id>' (another user of your tenant).")


class Explanation(BaseModel):
    item_id: str
    weight: float = Field(description="The plug's aggregator weight of this history item.")
    text: str


class GenerateResponse(BaseModel):
    user_id: str
    task: str
    output: str
    raw: str
    explanation: list[Explanation]
    latency_ms: float
    batch_size: int = Field(description="Requests that shared this backbone call.")
    history_size: int = Field(description="History items the plug read.")
    prompt_tokens: int
    persona: str = Field("own", description="Whose history plugged in (as requested).")


class TaskInfo(BaseModel):
    name: str
    kind: str
    item_fields: list[str]
    run: str


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ChatRequest(BaseModel):
    """OpenAI chat completions; ``model`` is a served task, ``user`` the user to personalize for.
    Sampling options (temperature, top_p, ...) are accepted and ignored: decoding is deterministic."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1)
    user: str | None = Field(None, min_length=1, max_length=256, pattern=ID_PATTERN)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False  # streaming is refused with a 422


class ErrorInfo(BaseModel):
    type: str
    message: str
    param: str | None = None
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
