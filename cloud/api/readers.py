"""Who is reading: staff (bearer token with the route's permission), an enrolled participant (a signed read,
`federation.request_auth`), or anyone. Routes that show more to the first two than to the last use `Reader`."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from cloud.access import Principal
from cloud.api.deps import get_cloud


@dataclass(frozen=True)
class Caller:
    staff: Principal | None = None
    participant: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.staff is None and self.participant is None


def reader(action: str):  # noqa: ANN201 - a FastAPI dependency
    def dependency(request: Request, authorization: str = Header(default="")) -> Caller:
        cloud = get_cloud(request)
        if not authorization:
            return Caller()
        pid = cloud.participants.authenticate_read(authorization, method=request.method, path=request.url.path,
                                                   query=request.url.query)
        if pid is not None:
            return Caller(participant=pid)
        return Caller(staff=cloud.access.authorize(authorization, action, path=request.url.path))

    dependency.__name__ = f"reader_{action.replace('.', '_')}"
    return dependency


Reader = Annotated[Caller, Depends(reader("round.read"))]
