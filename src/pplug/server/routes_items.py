"""``/v1/users``: list users; write, list and delete a user's history items; delete a user and all of hers."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import AfterValidator
from starlette.concurrency import run_in_threadpool

from pplug.data.records import HistoryItem
from pplug.server.deps import State, Tenant
from pplug.server.errors import ApiError
from pplug.server.runtime import encode_items
from pplug.server.schemas import (
    ID_PATTERN,
    AddItemsRequest,
    AddItemsResponse,
    Deleted,
    ItemList,
    ItemOut,
    UserInfo,
    UserList,
    normal_user_id,
    valid_text,
)
from pplug.server.store import LimitExceeded, NewItem, NotFound

router = APIRouter(prefix="/v1/users", tags=["users"])
UserId = Annotated[str, Path(min_length=1, max_length=256, pattern=ID_PATTERN,
                             description="The user (your id; valid UTF-8, NFC-normalised)."),
                   AfterValidator(normal_user_id)]
ItemId = Annotated[str, Path(min_length=1, max_length=256, pattern=ID_PATTERN), AfterValidator(valid_text)]


async def count_items_first(request: Request, st: State, _: Tenant) -> None:
    """The items-per-request cap, checked on the parsed JSON before any item is validated (413)."""
    try:
        items = (await request.json()).get("items")
    except (ValueError, AttributeError):  # not JSON or not an object: the body validation says so
        return
    limit = st.config.max_items_per_request
    if isinstance(items, list) and len(items) > limit:
        raise ApiError(413, f"{len(items)} items in one request; the limit is {limit} (max_items_per_request): "
                            "split the write", "items")


def not_found(e: NotFound) -> ApiError:
    return ApiError(404, str(e), "user_id" if e.kind == "user" else "item_id")


def _check(st: State, body: AddItemsRequest) -> list[HistoryItem]:
    """Limits (413) and shape (422) of a write, each message naming the item; returns the items with ids."""
    cfg = st.config
    if len(body.items) > cfg.max_items_per_request:
        raise ApiError(413, f"{len(body.items)} items in one request; the limit is {cfg.max_items_per_request} "
                            "(max_items_per_request): split the write", "items")
    items, seen = [], set()
    for i, it in enumerate(body.items):
        item_id = it.id or uuid.uuid4().hex
        if item_id in seen:
            raise ApiError(422, f"duplicate item id '{item_id}' in this request", f"items[{i}].id")
        seen.add(item_id)
        chars = sum(len(k) + len(str(v)) for k, v in it.fields.items())
        if chars > cfg.max_item_chars:
            raise ApiError(413, f"item '{item_id}' has {chars} characters of fields; the limit is "
                                f"{cfg.max_item_chars} (max_item_chars)", f"items[{i}].fields")
        missing = {m.task.name: m.missing_fields(it.fields) for m in st.models.values()}
        if all(missing.values()):
            need = "; ".join(f"task {t} needs {sorted(f)}" for t, f in missing.items())
            raise ApiError(422, f"item '{item_id}' fits no served task ({need})", f"items[{i}].fields")
        items.append(HistoryItem(item_id, dict(it.fields), it.date))
    return items


@router.post("/{user_id}/items", status_code=201, response_model=AddItemsResponse,
             dependencies=[Depends(count_items_first)],
             responses={413: {"description": "too many items, an item too long, or the history full"}})
async def add_items(user_id: UserId, body: AddItemsRequest, st: State, tenant: Tenant) -> AddItemsResponse:
    """Append items to a user's history (the user is created on her first write). Each item is embedded
    now, once, for every served task it fits; the reply comes only after the write is committed."""
    items = _check(st, body)
    vectors = await asyncio.get_running_loop().run_in_executor(st.model_executor, encode_items, st.models, items)
    new = [NewItem(it.id, it.fields, it.date, v) for it, v in zip(items, vectors, strict=True)]
    try:
        size = await run_in_threadpool(st.store.add_items, tenant, user_id, new, st.config.max_history_items)
    except LimitExceeded as e:
        raise ApiError(413, str(e), "items") from None
    return AddItemsResponse(user_id=user_id, item_ids=[it.id for it in items], history_size=size)


@router.get("/{user_id}/items", response_model=ItemList)
async def list_items(user_id: UserId, st: State, tenant: Tenant,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     offset: Annotated[int, Query(ge=0)] = 0) -> ItemList:
    """A page of the user's history items, oldest first."""
    if offset > st.config.max_list_offset:
        raise ApiError(422, f"offset={offset} is above the limit {st.config.max_list_offset} (max_list_offset)",
                       "offset")
    try:
        rows, total = await run_in_threadpool(st.store.list_items, tenant, user_id, limit, offset)
    except NotFound as e:
        raise not_found(e) from None
    return ItemList(user_id=user_id, items=[ItemOut(**r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("", response_model=UserList)
async def list_users(st: State, tenant: Tenant, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     offset: Annotated[int, Query(ge=0)] = 0) -> UserList:
    """A page of your users (oldest first) with their history sizes."""
    if offset > st.config.max_list_offset:
        raise ApiError(422, f"offset={offset} is above the limit {st.config.max_list_offset} (max_list_offset)",
                       "offset")
    rows, total = await run_in_threadpool(st.store.list_users, tenant, limit, offset)
    return UserList(users=[UserInfo(**r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{user_id}", response_model=UserInfo)
async def get_user(user_id: UserId, st: State, tenant: Tenant) -> UserInfo:
    """A user's history size."""
    try:
        return UserInfo(**await run_in_threadpool(st.store.user_info, tenant, user_id))
    except NotFound as e:
        raise not_found(e) from None


async def _delete(st: State, tenant: int, user_id: str, item_id: str | None, with_user: bool) -> Deleted:
    try:
        n = await run_in_threadpool(st.store.delete_items, tenant, user_id, item_id, with_user)
    except NotFound as e:
        raise not_found(e) from None
    return Deleted(user_id=user_id, deleted_items=n)


@router.delete("/{user_id}/items/{item_id}", response_model=Deleted)
async def delete_item(user_id: UserId, item_id: ItemId, st: State, tenant: Tenant) -> Deleted:
    """Delete one history item (and its embeddings)."""
    return await _delete(st, tenant, user_id, item_id, False)


@router.delete("/{user_id}/items", response_model=Deleted)
async def delete_items(user_id: UserId, st: State, tenant: Tenant) -> Deleted:
    """Delete all of a user's history items (the user stays)."""
    return await _delete(st, tenant, user_id, None, False)


@router.delete("/{user_id}", response_model=Deleted)
async def delete_user(user_id: UserId, st: State, tenant: Tenant) -> Deleted:
    """Delete a user and everything of hers (items, embeddings)."""
    return await _delete(st, tenant, user_id, None, True)
