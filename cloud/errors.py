"""Errors of the cloud tier, each mapped to one HTTP status at the API boundary.

    WearfedError (federation.errors)
    ├── CloudError (500)
    │   ├── BadRequest (400)        malformed or inconsistent submission
    │   ├── Unauthorized (401)      missing/invalid bearer token or signature
    │   ├── Forbidden (403)         known caller, action not allowed (unknown participant, bad enroll token)
    │   ├── NotFound (404)
    │   ├── Conflict (409)          wrong state, wrong round, duplicate, late, stale base model
    │   ├── TooLarge (413)
    │   └── PrivacyViolation (400/403/409, cloud.privacy)  a DP report that is inconsistent or passes a cap
    ├── CustodianRefusal (cloud.custodian)  the custodian declined to decrypt (fails the round, not a request)
    ├── CustodyError (cloud.custody)        a share, seal or key file is wrong
    ├── LedgerTampered (cloud.audit)        the audit ledger does not match its signed checkpoints
    └── ExportError (cloud.tflite_export)   a TFLite export failed or disagreed with torch
"""

from federation.errors import WearfedError


class CloudError(WearfedError):
    status = 500

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(CloudError):
    status = 400


class Unauthorized(CloudError):
    status = 401


class Forbidden(CloudError):
    status = 403


class NotFound(CloudError):
    status = 404


class Conflict(CloudError):
    status = 409


class TooLarge(CloudError):
    status = 413

