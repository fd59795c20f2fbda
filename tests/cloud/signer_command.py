"""Test stand-in for an external signer (an HSM or KMS command line): signs stdin with the Ed25519 key in argv[1]
(passphrase in env WEARFED_TEST_SIGNER_PASSPHRASE) and prints the base64 signature. Used by tests/cloud/test_log_key."""

import base64
import os
import sys
from pathlib import Path

from federation.signing import load_private_key

if __name__ == "__main__":
    passphrase = os.environ.get("WEARFED_TEST_SIGNER_PASSPHRASE", "").encode() or None
    key = load_private_key(Path(sys.argv[1]), passphrase=passphrase)
    sys.stdout.write(base64.b64encode(key.sign(sys.stdin.buffer.read())).decode())
