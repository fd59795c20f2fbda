"""Requests that carry several participants' signed documents at once (a hospital pool's nodes): every signature is
checked before any document is handled. One that fails, or a participant who is not enrolled or is locked, refuses
the whole batch with that document's status (a 401 counts against the carrier as any failed authentication does) and
an audit entry under its participant, as the document alone would get; nothing in the batch is stored. Each document
is then handled exactly as if it had come alone, with its own answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from cloud.errors import CloudError
from cloud.participants import Participants
from cloud.store import Store


class Signed(NamedTuple):
    participant: str
    doc: dict
    signature: str
    action: str  # named in the refusal and its audit entry
    detail: dict  # what else the refusal's audit entry records


def authenticate(store: Store, participants: Participants, signed: Sequence[Signed], *, domain: bytes,
                 kind: str) -> None:
    """Refuse the batch at its first document whose signature does not verify under its participant's key."""
    with store.read() as s:
        for i, item in enumerate(signed):
            try:
                with store.refusals(kind, item.participant, action=item.action, batch_item=i, **item.detail):
                    participants.verified(s, item.participant, item.doc, item.signature, domain=domain)
            except CloudError as exc:
                raise type(exc)(f"batch item {i} ({item.participant}, {item.action}): {exc.reason}; nothing in the "
                                "batch was accepted") from exc
