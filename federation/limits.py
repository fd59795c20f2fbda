"""Bounds and policy constants every tier checks, defined once (stdlib only: a device imports it too)."""

from __future__ import annotations

PARTICIPANT_ID = r"^[a-z0-9][a-z0-9._-]{0,62}$"  # participant, user, gateway and hospital ids
MAX_DELTA = 1e-5  # DP-SGD delta never above this (DESIGN.md)
DEFAULT_DELTA = 1e-5
MIN_CONTRIBUTORS_FLOOR = 3  # no round is decrypted with fewer distinct contributors, whatever is configured
DEFAULT_MIN_CONTRIBUTORS = 3
MAX_UPDATE_BYTES = 4 * 1024 * 1024  # a whole submission body, base64 ciphertext included
MAX_REGION_AGGREGATE_BYTES = 8 * 1024 * 1024  # one region aggregate: a ciphertext and up to 64 signed envelopes
MAX_REGION_INPUTS_BYTES = 64 * MAX_UPDATE_BYTES  # a region's answer to an audit: up to 64 ciphertexts
MAX_BATCH = 64  # participants' documents in one batch (a pool's): a round's most participants (ckks)
# a batch of secure-aggregation messages: the largest, shares to 64 neighbours, is under 32 KB each
MAX_SECAGG_BATCH_BYTES = MAX_BATCH * 32 * 1024
# One insulin or carbs event's plausible maximum (ours: beyond is a unit or entry error); the hospital loader and
# the export importers check against it.
INSULIN_MAX_U, CARBS_MAX_G = 100.0, 500.0
