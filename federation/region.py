"""Hierarchical aggregation: what a region relay signs about the aggregate it forwards, and the checks anyone holding
the region's and the participants' public keys can make of it.

A region relay (`cloud.region_relay`) sums its participants' masked CKKS inputs (exact addition modulo q0, so the
sum is byte-identical however it is grouped: `federation.ckks`, THE BOUND step 3) and forwards one aggregate per
batch. Its statement, signed by the region's enrolled Ed25519 key in `DOMAIN`, names the round, the region, the
aggregate's SHA-256 and each contributor's signed ciphertext SHA-256; each contributor's own signed envelope travels
with it (cheap metadata), so the cloud still checks every participant's signature, DP report and budget while
summing one ciphertext per batch. The envelope names the region (`UpdateEnvelope.region`): a region cannot forward
an update its participant addressed elsewhere.

What nobody can check without the inputs: that the aggregate really is the sum of the listed ciphertexts. The cloud
audits a random share of aggregates (`inputs_doc`: the region must then post every input it summed, signed) and
refuses one whose inputs do not sum to it; a signed statement with inputs that do not sum is evidence against the
region.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.errors import WearfedError
from federation.signing import sign, verify

DOMAIN = b"wearfed/region-aggregate/v1\n"
INPUTS_DOMAIN = b"wearfed/region-inputs/v1\n"


class RegionError(WearfedError):
    """A region aggregate (or its audit answer) does not match what its region or its participants signed."""


def statement(*, round_id: int, region: str, aggregate: bytes, contributors: Mapping[str, str]) -> dict:
    """The document a region signs for one aggregate (contributors: participant -> signed ciphertext sha256)."""
    return {"kind": "region.aggregate", "round": round_id, "region": region,
            "aggregate_sha256": hashlib.sha256(aggregate).hexdigest(),
            "contributors": dict(sorted(contributors.items()))}


def sign_statement(key: Ed25519PrivateKey, doc: dict) -> str:
    return sign(key, doc, domain=DOMAIN)


def verify_statement(public_key: str, doc: dict, signature: str) -> None:
    verify(public_key, doc, signature, domain=DOMAIN)


def inputs_doc(*, round_id: int, region: str, aggregate_sha256: str, inputs: Mapping[str, bytes]) -> dict:
    """What a region signs when it answers an audit: the hash of every input it posts."""
    return {"kind": "region.inputs", "round": round_id, "region": region, "aggregate_sha256": aggregate_sha256,
            "inputs": {p: hashlib.sha256(c).hexdigest() for p, c in sorted(inputs.items())}}


def sign_inputs(key: Ed25519PrivateKey, doc: dict) -> str:
    return sign(key, doc, domain=INPUTS_DOMAIN)


def verify_inputs(public_key: str, doc: dict, signature: str) -> None:
    verify(public_key, doc, signature, domain=INPUTS_DOMAIN)


def check_members(doc: Mapping, envelopes: Mapping[str, Mapping]) -> None:
    """The statement lists exactly the forwarded envelopes, each addressed to this region and round, with the
    ciphertext hash its participant signed. (Signatures are checked by whoever holds the participants' keys.)"""
    listed, region, round_id = dict(doc["contributors"]), doc["region"], doc["round"]
    if sorted(listed) != sorted(envelopes):
        extra, missing = sorted(set(envelopes) - set(listed)), sorted(set(listed) - set(envelopes))
        raise RegionError(f"region {region}'s statement lists {sorted(listed)}; the envelopes forwarded are of "
                          f"{sorted(envelopes)} (unlisted: {extra}, without envelope: {missing})")
    for pid, env in envelopes.items():
        if env.get("participant") != pid:
            raise RegionError(f"the envelope forwarded for {pid} is {env.get('participant')}'s")
        if env.get("region") != region:
            raise RegionError(f"{pid} addressed its update to {env.get('region') or 'the cloud directly'}, not to "
                              f"region {region}")
        if env.get("round") != round_id:
            raise RegionError(f"the envelope of {pid} is for round {env.get('round')}, the aggregate for {round_id}")
        if env.get("ciphertext_sha256") != listed[pid]:
            raise RegionError(f"region {region} lists ciphertext {listed[pid][:16]}... for {pid}, who signed "
                              f"{str(env.get('ciphertext_sha256'))[:16]}...")
