"""Key custody at the cloud: the federation's public CKKS context, and unsealing the custodian with k of n
custodians' shares (`cloud.custody` seals, `cloud.custodian` decrypts). Shares are held in memory only until the
threshold is reached, then discarded."""

from __future__ import annotations

import threading
from collections.abc import Callable

from cloud import custody
from cloud.custodian import Custodian
from cloud.errors import BadRequest, Conflict
from cloud.store import Store
from federation import ckks
from federation.responses import CustodianStatus


class KeyCustody:
    def __init__(self, store: Store, *, public_context_bytes: bytes, custodian: Custodian | None = None,
                 sealed: custody.Sealed | None = None) -> None:
        self.store = store
        self.public_context_bytes = public_context_bytes
        self.public_context = ckks.load_context(public_context_bytes)
        self.custodian = custodian
        self.sealed = sealed
        self.on_unseal: list[Callable[[], None]] = []  # run after the custodian is unsealed (resume waiting rounds)
        self._lock = threading.Lock()
        self._shares: dict[int, tuple[str, str]] = {}  # share index -> (share, custodian user): in memory only

    @property
    def insecure(self) -> bool:
        return self.custodian is not None and self.custodian.insecure

    def status(self) -> CustodianStatus:
        if self.custodian is not None:
            return CustodianStatus(state="unsealed", mode=self.custodian.mode)
        return CustodianStatus(state="sealed", threshold=self.sealed.threshold if self.sealed else None,
                               shares_received=len(self._shares))

    def add_share(self, actor: str, share: str) -> CustodianStatus:
        with self.store.refusals("custodian.unseal_failed", actor, action="custodian.unseal"):
            unsealed = self._add_share(actor, share)
        if unsealed:
            for hook in self.on_unseal:
                hook()
        return self.status()

    def _add_share(self, actor: str, share: str) -> bool:
        with self._lock:
            if self.custodian is not None:
                raise Conflict(f"the custodian is already unsealed ({self.custodian.mode})")
            if self.sealed is None:
                raise Conflict("no sealed key set on this server")
            try:
                index, _ = custody.parse_share(share, key_id=self.sealed.key_id)
            except custody.CustodyError as exc:
                raise BadRequest(str(exc)) from exc
            self._shares[index] = (share, actor)
            self.store.record("custodian.share_received", actor, index=index, received=len(self._shares),
                              threshold=self.sealed.threshold)
            if len(self._shares) < self.sealed.threshold:
                return False
            shares, holders = [v[0] for v in self._shares.values()], sorted({v[1] for v in self._shares.values()})
            self._shares.clear()
            try:
                self.custodian = Custodian.from_shares(self.sealed, shares)
            except (custody.CustodyError, ckks.CKKSError) as exc:
                raise BadRequest(f"unseal failed, all shares discarded: {exc}") from exc
            self.store.record("custodian.unsealed", actor, mode=self.custodian.mode, submitted_by=holders)
            return True
