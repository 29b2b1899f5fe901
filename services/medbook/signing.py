"""Message authenticity: an HMAC-SHA256 over every message the services exchange.

Off unless keys are given (``MEDBOOK_SIGNING_KEYS``), so the reference's clients
and queues keep working. With keys, every message a service publishes carries
``x-medbook-signature`` (``v1=<hex>``) and ``x-medbook-key-id``; the signature
covers the event type, the contract version and the body, which is everything
a handler reads. A consumer accepts a message signed with any of the keys it
has (two at once while keys rotate) and, when signing is required (the
default with keys), sends an unsigned or badly signed one to the dead-letter
queue with the reason before its handler sees it.

Rotation without downtime: add the new key to every service's list, then make
it the signing key (``MEDBOOK_SIGNING_KEY_ID``), then remove the old one once
no message signed with it can still be in a queue. Turning signing on: give
the keys with ``MEDBOOK_SIGNING_REQUIRED=false`` first (sign, accept unsigned),
then require it. docs/security.md has the threat model.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

SIGNATURE_HEADER: Final = "x-medbook-signature"
KEY_ID_HEADER: Final = "x-medbook-key-id"
_SCHEME: Final = "v1="


class SignatureRefused(Exception):
    """A message that is not signed with one of the keys, when signing is required."""


def parse_keys(text: str) -> dict[str, bytes]:
    """``kid:secret,kid:secret`` into ``{kid: secret}``; raise ValueError with the reason."""
    keys: dict[str, bytes] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        kid, sep, secret = part.partition(":")
        if not sep or not kid.strip() or not secret:
            raise ValueError("signing keys are written kid:secret, separated by commas")
        if len(secret) < 32:
            raise ValueError(f"signing key {kid.strip()!r} is shorter than 32 characters")
        if kid.strip() in keys:
            raise ValueError(f"signing key id {kid.strip()!r} is given twice")
        keys[kid.strip()] = secret.encode()
    return keys


def _digest(secret: bytes, event_type: str, version: Any, body: bytes) -> str:
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    mac.update(f"medbook\n{event_type}\n{version}\n".encode())
    mac.update(body)
    return mac.hexdigest()


@dataclass(frozen=True)
class MessageSigner:
    keys: Mapping[str, bytes]
    signing_key_id: str | None = None  # None: the first key
    required: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def headers(self, event_type: str, version: Any, body: bytes) -> dict[str, str]:
        """The signature headers for a message (none when signing is off)."""
        if not self.keys:
            return {}
        kid = self.signing_key_id or next(iter(self.keys))
        digest = _digest(self.keys[kid], event_type, version, body)
        return {SIGNATURE_HEADER: _SCHEME + digest, KEY_ID_HEADER: kid}

    def verify(
        self, event_type: str | None, version: Any, body: bytes, headers: Mapping[str, Any]
    ) -> None:
        """Raise :class:`SignatureRefused` unless the message is signed with a known key."""
        if not self.keys:
            return
        signature = _text(headers.get(SIGNATURE_HEADER))
        kid = _text(headers.get(KEY_ID_HEADER))
        if signature is None:
            if self.required:
                raise SignatureRefused("unsigned message (signing is required)")
            return
        if kid is None or kid not in self.keys:
            raise SignatureRefused(f"signed with an unknown key id {kid!r}")
        expected = _SCHEME + _digest(self.keys[kid], event_type or "", version, body)
        if not hmac.compare_digest(signature, expected):
            raise SignatureRefused(f"bad signature (key id {kid!r})")


NO_SIGNING: Final = MessageSigner({})


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
