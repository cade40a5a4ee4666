"""Bearer tokens to kernel callers: every request is someone, or it is refused with 401.

`caller(request)` (a FastAPI dependency) reads `Authorization: Bearer <token>`, asks the user
store whom the token belongs to, and answers an `llmos.kernel.api.Caller` for that user (their
name is the owner of everything they do; an admin user may act on every owner's processes).
A missing, malformed, unknown or revoked token is one 401 with `WWW-Authenticate: Bearer`, the
same text for each, so a probe learns nothing about which tokens exist.

What this does not do: decide what a caller may do (the kernel's API and policy do), or issue
tokens (`llmos user`, over `llmos.store.users`).
"""

from __future__ import annotations

from fastapi import Request

from llmos.errors import AuthError
from llmos.kernel import api
from llmos.store.users import User

UNAUTHORIZED = "missing, unknown or revoked token: send 'Authorization: Bearer <token>'"


def user_of(request: Request) -> User:
    """The user the request's bearer token names; AuthError (401) if none does."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError(UNAUTHORIZED)
    service = request.app.state.service
    user = service.users.authenticate(token)
    if user is None:
        raise AuthError(UNAUTHORIZED)
    request.state.user = user.name  # for the access log
    return user


def caller(request: Request) -> api.Caller:
    """The kernel caller for this request (FastAPI dependency)."""
    user = user_of(request)
    return api.Caller(user.name, user.admin, lambda: False)
