"""Key management for operators (``pplug serve --create-tenant/--list-keys/--revoke-key/--rotate-key/
--delete-tenant``): create, list, revoke and rotate tenant API keys, and delete a tenant with all its data.

Keys are shown once, when created; only their sha256 is stored, and listings show a key's id and a short
fingerprint of that hash, never the key. A revoked key stops working on the next request of every replica
(keys are looked up per request, not cached).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from pplug.server.auth import hash_key, new_key
from pplug.server.store import Store, check_tenant_name
from pplug.server.tables import ApiKey, Item, ItemEmbedding, Tenant, User


class AdminError(LookupError):
    """An unknown key id or tenant; the message names it."""


def create_key(store: Store, tenant: str) -> dict[str, Any]:
    """Create ``tenant`` if needed and give it a fresh key. Returns {tenant, key_id, api_key} (the key shown once)."""
    check_tenant_name(tenant)
    key = new_key()
    store.add_key(tenant, hash_key(key))
    with Session(store.engine) as s:
        key_id = s.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key)))
    return {"tenant": tenant, "key_id": key_id, "api_key": key}


def list_keys(store: Store) -> list[dict[str, Any]]:
    """Every key: id, tenant, fingerprint (first 12 hex of its sha256) and creation time; never the key."""
    with Session(store.engine) as s:
        rows = s.execute(select(ApiKey.id, Tenant.name, ApiKey.key_hash, ApiKey.created_at)
                         .join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(ApiKey.id))
        return [{"key_id": i, "tenant": name, "fingerprint": f"sha256:{h[:12]}", "created_at": t.isoformat()}
                for i, name, h, t in rows]


def revoke_key(store: Store, key_id: int) -> dict[str, Any]:
    """Delete key ``key_id``; returns {key_id, tenant}."""
    with store.write_session() as s:
        row = s.execute(select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
                        .where(ApiKey.id == key_id)).first()
        if row is None:
            raise AdminError(f"unknown key id {key_id} (see --list-keys)")
        s.delete(row[0])
        return {"key_id": key_id, "tenant": row[1], "revoked": True}


def rotate_key(store: Store, key_id: int) -> dict[str, Any]:
    """Replace key ``key_id`` by a fresh key of the same tenant, in one transaction (the old one stops working).
    Returns {tenant, key_id, api_key, revoked_key_id}."""
    key = new_key()
    with store.write_session() as s:
        old = s.get(ApiKey, key_id)
        if old is None:
            raise AdminError(f"unknown key id {key_id} (see --list-keys)")
        tenant = s.scalar(select(Tenant.name).where(Tenant.id == old.tenant_id))
        fresh = ApiKey(tenant_id=old.tenant_id, key_hash=hash_key(key))
        s.add(fresh)
        s.delete(old)
        s.flush()
        return {"tenant": tenant, "key_id": fresh.id, "api_key": key, "revoked_key_id": key_id}


def delete_tenant(store: Store, tenant: str) -> dict[str, Any]:
    """Delete a tenant and all its data (keys, users, items, embeddings) in one transaction; returns counts."""
    with store.write_session() as s:
        tid = s.scalar(select(Tenant.id).where(Tenant.name == tenant))
        if tid is None:
            raise AdminError(f"unknown tenant '{tenant}'")
        users = select(User.id).where(User.tenant_id == tid)
        items = select(Item.id).where(Item.user_id.in_(users))
        counts = {"users": s.scalar(select(func.count()).select_from(users.subquery())),
                  "items": s.scalar(select(func.count()).select_from(items.subquery())),
                  "keys": s.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.tenant_id == tid))}
        s.execute(delete(ItemEmbedding).where(ItemEmbedding.item_pk.in_(items)))
        s.execute(delete(Item).where(Item.user_id.in_(users)))
        s.execute(delete(User).where(User.tenant_id == tid))
        s.execute(delete(ApiKey).where(ApiKey.tenant_id == tid))
        s.execute(delete(Tenant).where(Tenant.id == tid))
        return {"tenant": tenant, "deleted": counts}
