"""Request and response bodies of the HTTP API (pydantic v2); field constraints give field-level 422s."""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, StrictBool, StrictInt

ID_PATTERN = r"^[^\s/]+$"  # user and item ids: no whitespace, no '/'
PERSONA_PATTERN = r"^(own|none|user:[^\s/]+)$"  # whose history a generate request plugs in


def valid_text(value: str) -> str:
    """Refuse strings that cannot be UTF-8 (lone surrogates such as ``"\\ud800"`` in JSON)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text contains a lone surrogate (not valid Unicode): send valid UTF-8") from None
    return value


def normal_user_id(value: str) -> str:
    """A user id as stored: valid text, NFC-normalised (so composed and decomposed accents name one user)."""
    return unicodedata.normalize("NFC", valid_text(value))


def iso_date(value: str | None) -> str | None:
    """``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD`` or an ISO 8601 date-time; anything else is refused."""
    if value is None:
        return None
    if re.fullmatch(r"\d{4}(-\d{2})?", value):
        date.fromisoformat(value + "-01" * (2 - value.count("-")))  # a real month
        return value
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO date: write YYYY, YYYY-MM, YYYY-MM-DD or an ISO 8601 date-time") from None
    return value


Text = Annotated[str, AfterValidator(valid_text)]
UserId = Annotated[str, Field(min_length=1, max_length=256, pattern=ID_PATTERN), AfterValidator(normal_user_id)]


def scalar(value: Any) -> str | int | float | bool:
    """An item field value: text, a finite number or a boolean (no NaN/Infinity: JSON cannot hold them)."""
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and Infinity are not allowed")
        return value
    if isinstance(value, str):
        return valid_text(value)
    raise ValueError(f"must be a string, number or boolean, not {type(value).__name__}")


Scalar = Annotated[str | int | float | bool, PlainValidator(scalar, json_schema_input_type=str | int | float | bool)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemIn(Strict):
    id: Text | None = Field(None, min_length=1, max_length=256, pattern=ID_PATTERN,
                           description="Item id, unique per user (generated when absent; an existing id is replaced).")
    fields: dict[Text, Scalar] = Field(min_length=1, description="Task fields, e.g. {'text': ..., 'category': ...}.")
    date: Annotated[str | None, AfterValidator(iso_date)] = Field(
        None, max_length=64, description="ISO date (YYYY, YYYY-MM, YYYY-MM-DD or a date-time), if known.")


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
    max_new_tokens: StrictInt | None = Field(None, ge=1, description="Generated tokens (default: the run's).")
    num_beams: StrictInt | None = Field(None, ge=1, le=8, description="Beam search width (1 = greedy).")


class GenerateRequest(DecodeOptions):
    user_id: UserId = Field(description="The user (of your tenant; NFC-normalised).")
    task: str = Field(min_length=1, max_length=128, description="A served task (GET /v1/tasks).")
    input: Text = Field(min_length=1, description="The task input.")
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
    text: Text | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool = False  # a last chunk with the token usage (OpenAI semantics)


class ChatRequest(BaseModel):
    """OpenAI chat completions; ``model`` is a served task, ``user`` the user to personalize for.
    Sampling options (temperature, top_p, ...) are accepted and ignored: decoding is deterministic."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1)
    user: UserId | None = None
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    n: StrictInt = Field(1, ge=1, le=1)
    stream: StrictBool = False  # true: OpenAI-style server-sent events (chat.completion.chunk)
    stream_options: StreamOptions | None = None


class ErrorInfo(BaseModel):
    type: str
    message: str
    param: str | None = None
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
