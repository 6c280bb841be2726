"""Sealing and opening personal content with per-owner keys (crypto-shredding).

A sealed value is the JSON object `{"$sealed": <base64 of nonce + AES-256-GCM
ciphertext of the value's JSON>, "$key": <key id>}`. It is what the store, the hash
chain and JetStream hold. Readers that may see the content (the owner, auditors,
the run that needs the history) open it here; once the owner's keys are erased
opening gives nothing, everywhere at once, and the sealed bytes stay for the chain.

Keys are cached per process (secrets for `CACHE_SECONDS`); an erasure drops them
here at once and in other processes when the erasure notice reaches them over NATS
(infra/runtime.py), or at the latest when their cache entry expires.
"""

import base64
import binascii
import copy
import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, TypeGuard, TypeVar

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from threadlog.domain.content import SEALED_FIELDS, Seal
from threadlog.domain.events import ConversationEvent
from threadlog.infra.settings import Settings
from threadlog.infra.store.content_keys import KeyTable, StoredKey, open_key_table

SEALED = "$sealed"
KEY = "$key"
CACHE_SECONDS = 60.0
_NONCE_BYTES = 12
# Binds ciphertexts to this use: a sealed value cannot be passed off as something else.
_ASSOCIATED = b"threadlog content v1"

_encode = msgspec.json.encode
_decode = msgspec.json.decode


def is_sealed(value: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict) and len(value) == 2 and SEALED in value and KEY in value


@dataclass(slots=True)  # not frozen: one per opened value, and frozen costs per field
class Opened:
    """A field's value opened: `erased` when its key is gone (then `value` is None)."""

    value: Any
    erased: bool = False


@dataclass(frozen=True, slots=True)
class _Cached:
    cipher: AESGCM | None  # None: the key is erased (or unknown)
    owner: str
    at: float


class ContentKeys:
    def __init__(self, table: KeyTable) -> None:
        self._table = table
        self._lock = threading.Lock()
        self._active: dict[str, tuple[str, AESGCM, float]] = {}
        self._keys: dict[str, _Cached] = {}  # by key id

    # --- sealing ---------------------------------------------------------------------

    def seal_for(self, owner: str) -> Seal:
        def seal(value: Any) -> Any:
            if value is None:
                return None
            key_id, cipher = self._active_key(owner)
            nonce = os.urandom(_NONCE_BYTES)
            box = nonce + cipher.encrypt(nonce, _encode(value), _ASSOCIATED)
            return {SEALED: base64.b64encode(box).decode("ascii"), KEY: key_id}

        return seal

    def warm(self, owner: str) -> None:
        """Fetches (or creates) the owner's key now, so that sealing needs no query."""
        self._active_key(owner)

    def _active_key(self, owner: str) -> tuple[str, AESGCM]:
        now = time.monotonic()
        with self._lock:
            cached = self._active.get(owner)
        if cached is not None and now - cached[2] < CACHE_SECONDS:
            return cached[0], cached[1]
        stored = self._table.active_key(owner)
        if stored is None or stored.secret is None:
            stored = StoredKey(uuid.uuid4().hex, owner, secrets.token_bytes(32))
            self._table.add(stored)
        assert stored.secret is not None
        cipher = AESGCM(stored.secret)
        with self._lock:
            self._active[owner] = (stored.key_id, cipher, now)
            self._keys[stored.key_id] = _Cached(cipher, owner, now)
        return stored.key_id, cipher

    # --- opening ---------------------------------------------------------------------

    def open(self, value: Any) -> Opened:
        """A stored field's value as written: plaintext stays as it is."""
        if not is_sealed(value):
            return Opened(value)
        plain, erased = self._opened(value)
        return Opened(plain, erased=erased)

    def _opened(self, value: dict[str, Any]) -> tuple[Any, bool]:
        """A sealed value's plaintext, and whether it is erased (then None)."""
        cipher = self._cipher(value[KEY])
        if cipher is None:
            return None, True
        try:
            box = binascii.a2b_base64(value[SEALED])
            plain = cipher.decrypt(box[:_NONCE_BYTES], box[_NONCE_BYTES:], _ASSOCIATED)
        except (InvalidTag, ValueError, TypeError):
            # Edited in the store: the hash chain locates it; readers see it as gone.
            return None, True
        return _decode(plain), False

    def open_fields(
        self, type_name: str, data: dict[str, Any]
    ) -> tuple[list[str], dict[str, Any]] | None:
        """Opens an event's sealed fields in `data` itself (a dict of the caller's own):
        the names of those erased and the fields as stored; None when none is sealed."""
        # Runs once per served event (a replay opens thousands): no objects per field.
        sealed: dict[str, Any] | None = None
        erased: list[str] = []
        for name in SEALED_FIELDS.get(type_name, ()):
            value = data.get(name)
            if not is_sealed(value):
                continue
            if sealed is None:
                sealed = {}
            sealed[name] = value
            data[name], was_erased = self._opened(value)
            if was_erased:
                erased.append(name)
        return None if sealed is None else (erased, sealed)

    def opens(self, key_id: str) -> bool:
        """Whether content sealed with the key still opens (never again once erased)."""
        return self._cipher(key_id) is not None

    def _cipher(self, key_id: str) -> AESGCM | None:
        now = time.monotonic()
        # Read without the lock (a dict lookup is atomic): this runs for every opened value.
        cached = self._keys.get(key_id)
        if cached is not None and now - cached.at < CACHE_SECONDS:
            return cached.cipher
        found = self._table.get([key_id])
        secret = found[0].secret if found else None
        cipher = AESGCM(secret) if secret is not None else None
        with self._lock:
            self._keys[key_id] = _Cached(cipher, found[0].owner if found else "", now)
        return cipher

    # --- erasing ---------------------------------------------------------------------

    def erase(self, owner: str) -> int:
        """Destroys every key of the owner's: how many were destroyed."""
        erased = self._table.erase(owner)
        self.forget(owner)
        return erased

    def forget(self, owner: str) -> None:
        """Drops what this process caches of the owner's keys (after an erasure)."""
        with self._lock:
            self._active.pop(owner, None)
            owned = [k for k, cached in self._keys.items() if cached.owner == owner]
            for key_id in owned:
                del self._keys[key_id]

    def close(self) -> None:
        self._table.close()


def open_content_keys(settings: Settings) -> ContentKeys:
    return ContentKeys(open_key_table(settings.database_url, settings.content_keys_sqlite_path))


E = TypeVar("E", bound=ConversationEvent)


def opened_event(keys: "ContentKeys", event: E) -> E:
    """A copy of a domain event with its sealed fields opened (None where erased)."""
    fields = SEALED_FIELDS.get(type(event).__name__, ())
    changes = {
        name: keys.open(value).value
        for name in fields
        if is_sealed(value := getattr(event, name, None))
    }
    if not changes:
        return event
    opened = copy.copy(event)
    for name, value in changes.items():
        object.__setattr__(opened, name, value)
    return opened
