"""Secure aggregation by pairwise masking with double masking and dropout recovery (Bonawitz et al., "Practical
Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017, §4 and Fig. 4) over a neighbour graph
(SecAgg+, Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020, §3), under
the CKKS encryption: the math both sides run. The cloud routes messages (`cloud.secagg`), nodes answer
(`gateway.secagg_client`); neither trusts the other's arithmetic.

Rounds of the protocol (Bonawitz Fig. 4; "U1..U5" are the participants still present at each):

0. advertise: participant i draws fresh X25519 keys (c_i for encrypting shares, s_i for masks) and a 256-bit
   self-mask seed b_i, and sends (c_pk, s_pk, SHA-256 commitment of b_i) signed by its enrolled Ed25519 identity.
1. share: from the signed adverts of U1 (each checked against the sender's identity key) every participant
   derives the same neighbour graph and Shamir-shares b_i and s_sk_i among its holders (itself and its
   neighbours), threshold t; each neighbour's shares go to it encrypted with ChaCha20-Poly1305 under
   HKDF-SHA256(X25519(c_sk_i, c_pk_j)) (RFC 7748, RFC 5869, RFC 8439).
2. input: i quantises its weighted update x_i to integers and sends, CKKS-encrypted (`federation.ckks` residues),
   y_i = x_i + PRG(b_i) + sum_{j in N(i) & U2} sign(i, j) PRG(s_ij)  (mod M), sign = +1 if i < j else -1,
   s_ij = HKDF-SHA256(X25519(s_sk_i, s_pk_j), info = round, both ids). PRG = ChaCha20 keystream of the 32-byte
   seed, read as 64-bit words reduced to 40 bits (M = 2^40 divides 2^64: exactly uniform). Not numpy, not a
   32-bit fold of the seed (Flower's SecAgg+ issue #7522).
3. consistency: the cloud names U3 (accepted inputs); each survivor signs the view (U1 keys, U2, U3). A
   participant unmasks only once it sees at least |U1| - floor(|U1|/3) signatures on the same view, so two
   conflicting views would need a signer in common: an honest participant signs one view per round.
4. unmask: for each holder-of owner j, a survivor reveals j's b-share if j is in U3, j's s_sk-share if j is in
   U2 \\ U3, never both (the view is unique), never its own s_sk-share. The cloud reconstructs b_j (checked against
   its commitment) and s_sk_j (checked against s_pk_j), and removes PRG(b_j) for every survivor and the dangling
   pairwise masks of every dropped participant: what remains is sum_{i in U3} x_i (mod M).

Parameters for a round of n = |U1| participants (2 <= n <= MAX_PARTICIPANTS = 64, CKKS's proved summand count):
dropout budget d = floor(n / 3); graph degree k = 2d (n >= 4; the complete graph for n <= 3); holders per
secret h = k + 1; threshold t = floor(h / 2) + 1 (a majority of the holders). The graph is the Harary graph
H(k, n) (Harary 1962: vertices on a ring, each joined to the k/2 nearest on either side; k-connected) over U1 in
an order fixed by a public seed, SHA-256 of the round and the advertised keys. Why these:
* recovery: if at most d of U1 drop at any point, a dropped j keeps >= k - (d - 1) = d + 1 = t surviving
  neighbours, a survivor keeps itself and >= k - d = d neighbours, t holders in all: every needed secret is
  reconstructed, whatever set of <= d drops;
* privacy: removing <= d < k vertices leaves H(k, n) connected, so the only partial sum free of pairwise masks is
  the sum over all of U3; a participant refuses (step 3) a view with more than d dropped;
* cost: k = 2 floor(n/3) pairs per participant (32 at n = 50, against 49 for Bonawitz's complete graph). Bell et
  al.'s O(log n) degree holds with high probability for random dropouts at large n; at n <= 64 no degree below
  2d survives an adversarial choice of d dropouts, and even random ones fail with probability > 2^-20 below it
  (docs/cloud.md gives the hypergeometric figures).

Quantisation: x = round(w 2^19) mod M for a weighted update w (`federation.ckks.weighted_update`, |w| <=
MAX_ABS_VALUE = 2^13); the sum of <= 64 such has |sum| <= 64 (2^32 + 1/2) < 2^39 = M / 2, so the centred residue
of the unmasked sum is the exact integer sum, off the true weighted sum by at most 64 x 2^-20 = 6.1e-5.

Threat model (docs/threat-model.md): the cloud, the custodians (holding the CKKS secret key) and up to t - 1
colluding participants per neighbourhood learn nothing about one participant's update beyond the sum over the
round's survivors. Not covered: participants' Ed25519 identity keys are served by the cloud (audited enrollment);
a participant can break the sum (garbage input or shares), which fails the round but reveals nothing.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import cbor2
import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from federation import ckks, shamir
from federation.errors import SignatureError, WearfedError
from federation.signing import canonical_json, sign, verify

DOMAIN = b"wearfed/secagg/v1\n"  # Ed25519 signature domain of every secure-aggregation message
PHASES = ("advertise", "share", "input", "consistency", "unmask")
KIND = {"advertise": "secagg.keys", "share": "secagg.shares", "consistency": "secagg.consistency",
        "unmask": "secagg.unmask", "view": "secagg.view"}
MAX_PARTICIPANTS = ckks.MAX_SUMMANDS
MODULUS = ckks.RESIDUE_MODULUS  # M
QUANT_BITS = 19
QUANT_SCALE = float(2**QUANT_BITS)
KEY_BYTES = 32
_HKDF_MASK = b"wearfed/secagg/v1/mask"
_HKDF_SHARE = b"wearfed/secagg/v1/share"
_COMMIT = b"wearfed/secagg/v1/self-mask-commitment"
_GRAPH = b"wearfed/secagg/v1/graph"
_VIEW = b"wearfed/secagg/v1/view"


class SecAggError(WearfedError, ValueError):
    """A secure-aggregation message, view or share is malformed, unsigned, inconsistent or unsafe to answer."""


# -- parameters ------------------------------------------------------------------------------------------
def dropout_budget(n: int) -> int:
    """d: how many of a round's n participants (those who advertised keys) may drop at any later point."""
    return n // 3


def degree(n: int) -> int:
    """k: neighbours per participant; 2d (the Harary graph H(2d, n)) from n = 4, the complete graph below."""
    return n - 1 if n <= 3 else 2 * dropout_budget(n)


def threshold(n: int) -> int:
    """t: shares that reconstruct a secret: a majority of its k + 1 holders."""
    return (degree(n) + 1) // 2 + 1


def min_survivors(n: int) -> int:
    return n - dropout_budget(n)


def _check_size(n: int) -> None:
    if not 2 <= n <= MAX_PARTICIPANTS:
        raise SecAggError(f"{n} participants advertised keys; secure aggregation needs 2..{MAX_PARTICIPANTS}")


# -- randomness, keys and derivations --------------------------------------------------------------------
def prg(seed: bytes, size: int) -> np.ndarray:
    """`size` values uniform on [0, M): the ChaCha20 keystream (RFC 8439) of a 32-byte seed, 64 bits per value."""
    if len(seed) != KEY_BYTES:
        raise SecAggError(f"PRG seed must be {KEY_BYTES} bytes")
    enc = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    words = np.frombuffer(enc.update(b"\x00" * (8 * size)), dtype="<u8")
    return (words & np.uint64(MODULUS - 1)).astype(np.int64)


def commitment(b: bytes) -> str:
    """The public commitment to a self-mask seed (hides the 256-bit seed; lets the cloud check reconstruction)."""
    return hashlib.sha256(_COMMIT + b).hexdigest()


def _x25519_public(sk: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes_raw()


def _dh(sk: bytes | X25519PrivateKey, peer_pk: bytes) -> bytes:
    private = sk if isinstance(sk, X25519PrivateKey) else X25519PrivateKey.from_private_bytes(sk)
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    except ValueError as exc:  # a low-order point gives an all-zero secret (RFC 7748 §6.1)
        raise SecAggError(f"X25519 key agreement failed: {exc}") from exc


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def mask_seed(s_sk: bytes | X25519PrivateKey, peer_s_pk: bytes, *, round_id: int, a: str, b: str) -> bytes:
    """s_ab: the pairwise mask seed both a and b derive (HKDF-SHA256 over X25519; round and both ids in info)."""
    lo, hi = sorted((a, b))
    return _hkdf(_dh(s_sk, peer_s_pk), b"%s|%d|%s|%s" % (_HKDF_MASK, round_id, lo.encode(), hi.encode()))


def _share_key(c_sk: bytes | X25519PrivateKey, peer_c_pk: bytes, *, round_id: int, sender: str,
               recipient: str) -> bytes:
    return _hkdf(_dh(c_sk, peer_c_pk), b"%s|%d|%s|%s" % (_HKDF_SHARE, round_id, sender.encode(), recipient.encode()))


def _share_aad(round_id: int, sender: str, recipient: str) -> bytes:
    return b"%s|%d|%s|%s" % (_HKDF_SHARE, round_id, sender.encode(), recipient.encode())


def seal_share(c_sk: bytes | X25519PrivateKey, recipient_c_pk: bytes, *, round_id: int, sender: str, recipient: str,
               b_share: bytes, sk_share: bytes) -> str:
    """Encrypt a holder's two shares for it: ChaCha20-Poly1305, random nonce, ids and round bound as AAD."""
    key = _share_key(c_sk, recipient_c_pk, round_id=round_id, sender=sender, recipient=recipient)
    nonce = secrets.token_bytes(12)
    plain = cbor2.dumps({"r": round_id, "s": sender, "t": recipient, "b": b_share, "k": sk_share})
    ct = ChaCha20Poly1305(key).encrypt(nonce, plain, _share_aad(round_id, sender, recipient))
    return base64.b64encode(nonce + ct).decode("ascii")


def open_share(c_sk: bytes | X25519PrivateKey, sender_c_pk: bytes, token: str, *, round_id: int, sender: str,
               recipient: str) -> tuple[bytes, bytes]:
    """(b share, s_sk share) from `sender`, or SecAggError if it was not made by the sender's c key for us."""
    try:
        raw = base64.b64decode(token, validate=True)
        key = _share_key(c_sk, sender_c_pk, round_id=round_id, sender=sender, recipient=recipient)
        doc = cbor2.loads(ChaCha20Poly1305(key).decrypt(raw[:12], raw[12:], _share_aad(round_id, sender, recipient)))
    except (ValueError, InvalidTag, binascii.Error, cbor2.CBORDecodeError) as exc:
        raise SecAggError(f"share from {sender} does not decrypt: {exc.__class__.__name__}") from exc
    if (doc.get("r"), doc.get("s"), doc.get("t")) != (round_id, sender, recipient):
        raise SecAggError(f"share from {sender} names another round or pair")
    if not all(isinstance(doc.get(k), bytes) and len(doc[k]) == shamir.SHARE_BYTES for k in ("b", "k")):
        raise SecAggError(f"share from {sender} is malformed")
    return doc["b"], doc["k"]


@dataclass(frozen=True)
class RoundKeys:
    """One participant's secrets for one round (fresh every round)."""

    c_sk: bytes
    s_sk: bytes
    b: bytes

    @classmethod
    def generate(cls) -> RoundKeys:
        return cls(c_sk=X25519PrivateKey.generate().private_bytes_raw(),
                   s_sk=X25519PrivateKey.generate().private_bytes_raw(), b=secrets.token_bytes(KEY_BYTES))

    @functools.cached_property
    def c_key(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(self.c_sk)

    @functools.cached_property
    def s_key(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(self.s_sk)

    def public(self) -> dict[str, str]:
        return {"c_pk": _b64(self.c_key.public_key().public_bytes_raw()),
                "s_pk": _b64(self.s_key.public_key().public_bytes_raw()), "b_commit": commitment(self.b)}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64_key(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise SecAggError(f"{what} is not base64") from exc
    if len(raw) != KEY_BYTES:
        raise SecAggError(f"{what} is not {KEY_BYTES} bytes")
    return raw


# -- adverts, graph, views -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerKeys:
    """A participant's verified advert for a round, with the identity key that signed it."""

    participant: str
    identity_key: str
    c_pk: bytes
    s_pk: bytes
    b_commit: str


def verify_adverts(round_id: int, adverts: Sequence[Mapping]) -> dict[str, PeerKeys]:
    """Check every signed advert {participant, identity_key, advert, signature}; participant -> keys."""
    out: dict[str, PeerKeys] = {}
    for a in adverts:
        doc, pid = a.get("advert") or {}, a.get("participant")
        if doc.get("kind") != KIND["advertise"] or doc.get("round") != round_id or doc.get("participant") != pid:
            raise SecAggError(f"advert of {pid} is not a key advert of round {round_id} by {pid}")
        try:
            verify(a["identity_key"], doc, a["signature"], domain=DOMAIN)
        except (SignatureError, KeyError) as exc:
            raise SecAggError(f"advert of {pid} is not signed by its enrolled identity key") from exc
        if pid in out:
            raise SecAggError(f"two adverts for {pid}")
        commit = str(doc.get("b_commit", ""))
        if len(commit) != 64 or any(ch not in "0123456789abcdef" for ch in commit):
            raise SecAggError(f"advert of {pid} has a malformed commitment")
        out[pid] = PeerKeys(participant=pid, identity_key=a["identity_key"],
                            c_pk=_unb64_key(doc.get("c_pk", ""), "c_pk"), s_pk=_unb64_key(doc.get("s_pk", ""), "s_pk"),
                            b_commit=commit)
    return out


def keys_digest(round_id: int, keys: Mapping[str, PeerKeys]) -> bytes:
    doc = {"round": round_id, "keys": [[p, _b64(k.c_pk), _b64(k.s_pk), k.b_commit, k.identity_key]
                                       for p, k in sorted(keys.items())]}
    return hashlib.sha256(_GRAPH + canonical_json(doc)).digest()


def _shuffled(members: Sequence[str], seed: bytes) -> list[str]:
    """Fisher-Yates with unbiased draws (rejection sampling) from a ChaCha20 stream of the seed."""
    order = sorted(members)
    stream = Cipher(algorithms.ChaCha20(seed, b"\x01" + b"\x00" * 15), mode=None).encryptor()
    for i in range(len(order) - 1, 0, -1):
        bound = (2**32 // (i + 1)) * (i + 1)
        while (r := int.from_bytes(stream.update(b"\x00" * 4), "little")) >= bound:
            pass
        j = r % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def neighbours(members: Iterable[str], seed: bytes) -> dict[str, list[str]]:
    """The round's graph: H(k, n) over a seeded order of `members` (the complete graph for n <= 3)."""
    ring = _shuffled(list(members), seed)
    n = len(ring)
    k = degree(n)
    if k >= n - 1:
        return {p: sorted(q for q in ring if q != p) for p in ring}
    out = {}
    for pos, p in enumerate(ring):
        near = {ring[(pos + off) % n] for step in range(1, k // 2 + 1) for off in (step, -step)}
        out[p] = sorted(near)
    return out


@dataclass(frozen=True)
class Round:
    """What both sides derive from the verified adverts of U1: graph, threshold, share indices."""

    round_id: int
    keys: dict[str, PeerKeys]
    members: list[str] = field(init=False)
    graph: dict[str, list[str]] = field(init=False)
    t: int = field(init=False)
    d: int = field(init=False)
    digest: bytes = field(init=False)

    def __post_init__(self) -> None:
        _check_size(len(self.keys))
        digest = keys_digest(self.round_id, self.keys)
        object.__setattr__(self, "members", sorted(self.keys))
        object.__setattr__(self, "digest", digest)
        object.__setattr__(self, "graph", neighbours(self.keys, digest))
        object.__setattr__(self, "t", threshold(len(self.keys)))
        object.__setattr__(self, "d", dropout_budget(len(self.keys)))

    def x(self, participant: str) -> int:
        """Shamir index of a participant: its 1-based position in sorted U1."""
        return self.members.index(participant) + 1

    def holders(self, owner: str) -> list[str]:
        return sorted([owner, *self.graph[owner]])

    def view_digest(self, u2: Iterable[str], u3: Iterable[str]) -> str:
        doc = {"round": self.round_id, "keys": self.digest.hex(), "u2": sorted(u2), "u3": sorted(u3)}
        return hashlib.sha256(_VIEW + canonical_json(doc)).hexdigest()

    def check_sets(self, u2: Sequence[str], u3: Sequence[str] | None = None) -> None:
        if not set(u2) <= set(self.members) or len(set(u2)) != len(u2):
            raise SecAggError("U2 is not a set of participants who advertised keys")
        survivors = u2 if u3 is None else u3
        if u3 is not None and (not set(u3) <= set(u2) or len(set(u3)) != len(u3)):
            raise SecAggError("U3 is not a subset of U2")
        if len(self.members) - len(survivors) > self.d:
            raise SecAggError(f"{len(self.members) - len(survivors)} of {len(self.members)} participants dropped; at "
                              f"most {self.d} may: answering would expose a partial sum")


def sign_doc(key: Ed25519PrivateKey, doc: dict) -> str:
    return sign(key, doc, domain=DOMAIN)


def verify_doc(identity_key: str, doc: dict, signature: str) -> None:
    try:
        verify(identity_key, doc, signature, domain=DOMAIN)
    except SignatureError as exc:
        raise SecAggError(f"{doc.get('kind')} of {doc.get('participant')} is not signed by its identity key") from exc


def view_request(key: Ed25519PrivateKey, *, round_id: int, participant: str, at: float) -> dict:
    """A signed request for a participant's view of a round (fresh `at`, so a recorded one expires)."""
    doc = {"kind": KIND["view"], "round": round_id, "participant": participant, "at": at}
    return {**doc, "signature": sign_doc(key, doc)}


# -- quantisation ------------------------------------------------------------------------------------------
def quantise(w: np.ndarray) -> np.ndarray:
    """Residues of round(w x 2^19) modulo M; |w| <= MAX_ABS_VALUE (so a sum of 64 cannot wrap)."""
    v = np.asarray(w, dtype=np.float64).ravel()
    if not np.all(np.isfinite(v)):
        raise SecAggError("update holds NaN or infinite values")
    if v.size and np.max(np.abs(v)) > ckks.MAX_ABS_VALUE:
        raise SecAggError(f"update value {np.max(np.abs(v)):.6g} exceeds {ckks.MAX_ABS_VALUE:g}: a sum of "
                          f"{MAX_PARTICIPANTS} such updates could wrap modulo 2^{ckks.RESIDUE_BITS}")
    return np.mod(np.rint(v * QUANT_SCALE).astype(np.int64), MODULUS)


def dequantise(residue_sum: np.ndarray) -> np.ndarray:
    """The centred residue of an unmasked sum, divided by 2^19: the weighted sum to within 64 x 2^-20."""
    r = np.asarray(residue_sum, dtype=np.int64) % MODULUS
    return np.where(r >= MODULUS // 2, r - MODULUS, r).astype(np.float64) / QUANT_SCALE


def _sign(i: str, j: str) -> int:
    return 1 if i < j else -1


# -- the participant ---------------------------------------------------------------------------------------
class ParticipantSession:
    """One participant's side of one round: builds each message from the cloud's view, checks what it is shown.

    State that must survive a restart (`to_state` / `from_state`): the round's secrets, the U1 keys pinned when
    the shares were made, the shares received, and the U2/view it masked, signed and revealed for, so it never
    answers two different views of the same round."""

    def __init__(self, *, round_id: int, participant: str, keys: RoundKeys | None = None) -> None:
        self.round_id = round_id
        self.participant = participant
        self.keys = keys or RoundKeys.generate()
        self.pinned: dict[str, PeerKeys] | None = None
        self.own: tuple[bytes, bytes] | None = None  # (b share, s_sk share) this participant holds of itself
        self.received: dict[str, tuple[bytes, bytes]] = {}
        self.masked_u2: list[str] | None = None
        self.signed_view: str | None = None
        self.revealed_view: str | None = None
        self._rnd: Round | None = None

    # persistence
    def to_state(self) -> dict:
        return {"round": self.round_id, "participant": self.participant,
                "keys": {"c_sk": self.keys.c_sk.hex(), "s_sk": self.keys.s_sk.hex(), "b": self.keys.b.hex()},
                "pinned": None if self.pinned is None else [
                    {"participant": k.participant, "identity_key": k.identity_key, "c_pk": _b64(k.c_pk),
                     "s_pk": _b64(k.s_pk), "b_commit": k.b_commit} for k in self.pinned.values()],
                "own": None if self.own is None else [self.own[0].hex(), self.own[1].hex()],
                "received": {p: [b.hex(), k.hex()] for p, (b, k) in self.received.items()},
                "masked_u2": self.masked_u2, "signed_view": self.signed_view, "revealed_view": self.revealed_view}

    @classmethod
    def from_state(cls, state: Mapping) -> ParticipantSession:
        k = state["keys"]
        out = cls(round_id=state["round"], participant=state["participant"],
                  keys=RoundKeys(c_sk=bytes.fromhex(k["c_sk"]), s_sk=bytes.fromhex(k["s_sk"]), b=bytes.fromhex(k["b"])))
        if state.get("pinned") is not None:
            out.pinned = {p["participant"]: PeerKeys(participant=p["participant"], identity_key=p["identity_key"],
                                                     c_pk=base64.b64decode(p["c_pk"]), s_pk=base64.b64decode(p["s_pk"]),
                                                     b_commit=p["b_commit"]) for p in state["pinned"]}
        if state.get("own") is not None:
            out.own = (bytes.fromhex(state["own"][0]), bytes.fromhex(state["own"][1]))
        out.received = {p: (bytes.fromhex(v[0]), bytes.fromhex(v[1])) for p, v in state.get("received", {}).items()}
        out.masked_u2 = state.get("masked_u2")
        out.signed_view = state.get("signed_view")
        out.revealed_view = state.get("revealed_view")
        return out

    # round 0
    def advert(self, key: Ed25519PrivateKey) -> dict:
        doc = {"kind": KIND["advertise"], "round": self.round_id, "participant": self.participant,
               **self.keys.public()}
        return {"advert": doc, "signature": sign_doc(key, doc)}

    def _round(self, view: Mapping) -> Round:
        if view.get("round") != self.round_id:
            raise SecAggError(f"view is of round {view.get('round')}, this session is round {self.round_id}")
        adverts = view.get("adverts") or []
        if self.pinned is not None:  # verified when the shares were made: the view must carry exactly those keys
            shown = {a.get("participant"): (a.get("identity_key"), *((a.get("advert") or {}).get(f)
                                                                       for f in ("c_pk", "s_pk", "b_commit")))
                     for a in adverts}
            pinned = {p: (k.identity_key, _b64(k.c_pk), _b64(k.s_pk), k.b_commit) for p, k in self.pinned.items()}
            if shown != pinned or len(adverts) != len(pinned):
                raise SecAggError("the round's advertised keys changed after the shares were made")
            if self._rnd is None:
                self._rnd = Round(self.round_id, self.pinned)
            return self._rnd
        keys = verify_adverts(self.round_id, adverts)
        mine = keys.get(self.participant)
        if mine is None or (_b64(mine.c_pk), _b64(mine.s_pk), mine.b_commit) != tuple(self.keys.public().values()):
            raise SecAggError("the view does not carry this participant's own advert")
        return Round(self.round_id, keys)

    # round 1
    def shares(self, view: Mapping, key: Ed25519PrivateKey) -> dict:
        rnd = self._round(view)
        self.pinned, self._rnd = dict(rnd.keys), rnd
        holders = rnd.holders(self.participant)
        xs = [rnd.x(h) for h in holders]
        b_sh = shamir.split(self.keys.b, threshold=rnd.t, xs=xs)
        sk_sh = shamir.split(self.keys.s_sk, threshold=rnd.t, xs=xs)
        me = rnd.x(self.participant)
        self.own = (b_sh[me], sk_sh[me])
        sealed = {j: seal_share(self.keys.c_key, rnd.keys[j].c_pk, round_id=self.round_id, sender=self.participant,
                                recipient=j, b_share=b_sh[rnd.x(j)], sk_share=sk_sh[rnd.x(j)])
                  for j in rnd.graph[self.participant]}
        doc = {"kind": KIND["share"], "round": self.round_id, "participant": self.participant, "shares": sealed}
        return {"doc": doc, "signature": sign_doc(key, doc)}

    def _pinned_round(self, view: Mapping) -> Round:
        if self.pinned is None or self.own is None:
            raise SecAggError("this participant made no shares in this round")
        return self._round(view)

    # round 2
    def mask(self, view: Mapping, weighted_update: np.ndarray) -> np.ndarray:
        """y = x + PRG(b) + sum of signed pairwise masks with the neighbours in U2, modulo M."""
        rnd = self._pinned_round(view)
        u2 = sorted(view.get("u2") or [])
        rnd.check_sets(u2)
        if self.participant not in u2:
            raise SecAggError("this participant is not in U2")
        if self.masked_u2 is not None and self.masked_u2 != u2:
            raise SecAggError("asked to mask again against another U2")
        inbox = view.get("inbox") or {}
        for j in rnd.graph[self.participant]:
            if j in u2 and j not in self.received:
                if j not in inbox:
                    raise SecAggError(f"{j} is said to be in U2 but sent this participant no shares")
                self.received[j] = open_share(self.keys.c_key, rnd.keys[j].c_pk, inbox[j], round_id=self.round_id,
                                              sender=j, recipient=self.participant)
        x = quantise(weighted_update)
        y = x + prg(self.keys.b, x.size)  # < 2^40 per term, at most 65 terms: no int64 overflow
        for j in rnd.graph[self.participant]:
            if j in u2:
                seed = mask_seed(self.keys.s_key, rnd.keys[j].s_pk, round_id=self.round_id, a=self.participant, b=j)
                y += _sign(self.participant, j) * prg(seed, x.size)
        self.masked_u2 = u2
        return y % MODULUS

    def masked_blob(self, view: Mapping, weighted_update: np.ndarray, ctx: object) -> bytes:
        return ckks.encrypt_residues(ctx, self.mask(view, weighted_update))

    # round 3
    def consistency(self, view: Mapping, key: Ed25519PrivateKey) -> dict:
        rnd = self._pinned_round(view)
        u2, u3 = sorted(view.get("u2") or []), sorted(view.get("u3") or [])
        if self.masked_u2 is not None and u2 != self.masked_u2:
            raise SecAggError("U2 differs from the one this participant masked against")
        rnd.check_sets(u2, u3)
        if self.participant not in u3:
            raise SecAggError("this participant's input is not in U3")
        digest = rnd.view_digest(u2, u3)
        if self.signed_view not in (None, digest):
            raise SecAggError("already signed another view of this round")
        self.signed_view = digest
        doc = {"kind": KIND["consistency"], "round": self.round_id, "participant": self.participant,
               "view_sha256": digest}
        return {"doc": doc, "signature": sign_doc(key, doc)}

    # round 4
    def unmask(self, view: Mapping, key: Ed25519PrivateKey) -> dict:
        rnd = self._pinned_round(view)
        u2, u3 = sorted(view.get("u2") or []), sorted(view.get("u3") or [])
        digest = rnd.view_digest(u2, u3)
        if self.signed_view != digest:
            raise SecAggError("the view to unmask is not the one this participant signed")
        if self.revealed_view not in (None, digest):
            raise SecAggError("already revealed shares for another view of this round")
        signers: set[str] = set()
        need = min_survivors(len(rnd.members))
        for c in view.get("consistency") or []:
            pid = c.get("participant")
            if pid in u3 and pid not in signers and len(signers) < need:
                doc = {"kind": KIND["consistency"], "round": self.round_id, "participant": pid, "view_sha256": digest}
                verify_doc(rnd.keys[pid].identity_key, doc, c.get("signature", ""))
                signers.add(pid)
        if len(signers) < need:
            raise SecAggError(f"{len(signers)} participants signed this view, {need} needed before shares are "
                              "revealed")
        b_shares, sk_shares = {}, {}
        for owner in rnd.holders(self.participant):
            if owner == self.participant:
                b_shares[owner] = self.own[0].hex()  # its own b-share; never its own s_sk-share
            elif owner in u3:
                b_shares[owner] = self.received[owner][0].hex()
            elif owner in u2:
                sk_shares[owner] = self.received[owner][1].hex()
        self.revealed_view = digest
        doc = {"kind": KIND["unmask"], "round": self.round_id, "participant": self.participant,
               "view_sha256": digest, "b_shares": b_shares, "sk_shares": sk_shares}
        return {"doc": doc, "signature": sign_doc(key, doc)}


# -- the server's unmasking ----------------------------------------------------------------------------------
def unmask_sum(masked_sum: np.ndarray, *, rnd: Round, u2: Sequence[str], u3: Sequence[str],
               responses: Mapping[str, Mapping]) -> tuple[np.ndarray, dict]:
    """sum_{i in U3} x_i (mod M) from the decrypted masked sum and the survivors' unmask docs {participant: doc}.

    Reconstructs b_j for every j in U3 and s_sk_j for every j in U2 \\ U3 from >= t shares of holders of j
    (checked against the advertised commitment / public key), then removes PRG(b_j) and the pairwise masks
    between dropped participants and their surviving neighbours."""
    rnd.check_sets(list(u2), list(u3))
    total = np.asarray(masked_sum, dtype=np.int64) % MODULUS
    size = total.size
    dropped = sorted(set(u2) - set(u3))

    def gather(owner: str, kind: str) -> dict[int, bytes]:
        shares = {}
        for holder in rnd.holders(owner):
            doc = responses.get(holder)
            if doc is not None and owner in doc.get(kind, {}):
                try:
                    shares[rnd.x(holder)] = bytes.fromhex(doc[kind][owner])
                except ValueError as exc:
                    raise SecAggError(f"{kind} of {owner} from {holder} is not hex") from exc
        return shares

    def reconstruct(owner: str, kind: str, valid: Callable[[bytes], bool]) -> bytes:
        shares = gather(owner, kind)
        try:
            secret = shamir.combine(shares, threshold=rnd.t, check_extra=False)
            if not valid(secret):  # a wrong share among the first t: the extra shares say which
                shamir.combine(shares, threshold=rnd.t, check_extra=True)
                raise shamir.ShamirError("a share is wrong and there are no extra shares to tell which")
        except shamir.ShamirError as exc:
            what = "self-mask seed" if kind == "b_shares" else "mask key"
            raise SecAggError(f"{what} of {owner} not reconstructed ({len(shares)} shares, t = {rnd.t}): "
                              f"{exc}") from exc
        return secret

    acc = np.zeros(size, dtype=np.int64)  # < 2^40 per term, at most 64 x 65 terms: no int64 overflow
    for j in sorted(u3):
        b = reconstruct(j, "b_shares", lambda secret, j=j: commitment(secret) == rnd.keys[j].b_commit)
        acc += prg(b, size)
    for j in dropped:
        s_sk = reconstruct(j, "sk_shares", lambda secret, j=j: _x25519_public(secret) == rnd.keys[j].s_pk)
        s_key = X25519PrivateKey.from_private_bytes(s_sk)
        for i in rnd.graph[j]:
            if i in u3:
                seed = mask_seed(s_key, rnd.keys[i].s_pk, round_id=rnd.round_id, a=i, b=j)
                acc += _sign(i, j) * prg(seed, size)
    total = (total - acc) % MODULUS
    return total, {"self_masks_removed": sorted(u3), "dropped_masks_removed": dropped, "threshold": rnd.t,
                   "degree": degree(len(rnd.members))}
