"""Errors of the cloud tier, each mapped to one HTTP status at the API boundary.

    CloudError (500)
    ├── BadRequest (400)        malformed or inconsistent submission
    ├── Unauthorized (401)      missing/invalid bearer token or signature
    ├── Forbidden (403)         known caller, action not allowed (unknown participant, bad enroll token)
    ├── NotFound (404)
    ├── Conflict (409)          wrong state, wrong round, duplicate, late, stale base model
    └── TooLarge (413)
"""


class CloudError(Exception):
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



def for_status(status: int, reason: str) -> CloudError:
    """The CloudError subclass for an HTTP status (a plain CloudError for any other)."""
    for cls in (BadRequest, Unauthorized, Forbidden, NotFound, Conflict, TooLarge):
        if cls.status == status:
            return cls(reason)
    return CloudError(reason)
