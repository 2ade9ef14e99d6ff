"""OpenAI-shaped errors: the only way a failure reaches a tenant (never a stack trace).

Every status the gateway answers, including the framework's own (unknown path, wrong method, a body that is
not JSON or not UTF-8), goes out as `{"error": {"message", "type", "param", "code"}}`. A dependency that is
down (database, Redis) is the operator's problem, not the tenant's: 503 with Retry-After, never 500.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3

import psycopg
import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from billing.rules import LedgerRecovering
from gateway import metrics
from gateway.json_limits import JSON_HINT

log = logging.getLogger("ferryman")

RETRY_AFTER_S = 5  # how soon a client may try again after a dependency outage or during a restart


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """What every 4xx/5xx of the gateway answers (OpenAI's error object)."""
    error: ErrorDetail


WHY = {400: "Invalid request: the message names the parameter.", 401: "Missing or wrong API key.",
       402: "Budget exhausted, or held by requests in flight.", 403: "Not allowed for this key or tenant.",
       404: "Unknown model or object.", 409: "Conflicts with an existing object.",
       413: "Request body over the gateway's limit.", 422: "Well-formed but unacceptable values.",
       429: "Rate limit reached: retry after Retry-After.",
       503: "A dependency (database, Redis, model backend) is down, or the gateway is restarting: retry after "
            "Retry-After.", 504: "The model did not finish in time."}


def responses(*statuses: int) -> dict:
    """The `responses=` of a route: the error statuses it really answers, for the OpenAPI document."""
    return {status: {"model": ErrorResponse, "description": WHY[status]} for status in statuses}


def invalid(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def unavailable(message: str, code: str = "service_unavailable") -> APIError:
    return APIError(503, message, "server_error", code, headers={"retry-after": str(RETRY_AFTER_S)})


# A lost connection to the ledger or to Redis: the request did not happen; the same request may succeed later.
# The money path runs on the driver's own cursors (billing.db.Prepared), so the drivers' errors arrive unwrapped.
DATABASE_DOWN = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError,
                 sqlalchemy.exc.PendingRollbackError, psycopg.OperationalError, psycopg.InterfaceError,
                 sqlite3.OperationalError)
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def outage(exc: BaseException) -> APIError | None:
    """The 503 for a dependency outage, or None when `exc` is not one."""
    if isinstance(exc, DATABASE_DOWN):
        return unavailable("The ledger database is unreachable right now; please retry shortly.", "database_unavailable")
    if isinstance(exc, LedgerRecovering):
        error = unavailable(str(exc), "ledger_recovering")
        error.headers["retry-after"] = str(max(1, exc.retry_after_s))
        return error
    if isinstance(exc, REDIS_DOWN):
        return unavailable("The rate-limit and budget-hold store (Redis) is unreachable right now; please retry "
                           "shortly.",
                           "rate_limiter_unavailable")
    return None


def install(app: FastAPI) -> None:
    app.add_exception_handler(APIError, handle_api_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(HTTPException, handle_http_error)
    for kind in (*DATABASE_DOWN, *REDIS_DOWN, LedgerRecovering):
        app.add_exception_handler(kind, handle_outage)
    app.add_exception_handler(Exception, handle_unexpected)


def refusal(request: Request, error: APIError) -> JSONResponse:
    """The answer to a tenant request refused before any work, counted by reason (ferryman_rejected_total). An
    error after admission (the request has a ticket: it was settled and counted as such) is no refusal."""
    if request.url.path.startswith("/v1/") and not getattr(request.state, "admitted", False):
        metrics.refused(error.status, error.code, getattr(request.state, "model", ""))
    return error.response()


async def handle_api_error(request: Request, exc: APIError) -> JSONResponse:
    await held_back(request, exc.status)
    return refusal(request, exc)


async def held_back(request: Request, status: int) -> None:
    """A sender that keeps being refused waits for its answer (gateway/tarpit.py); a served request never does."""
    tarpit = getattr(request.app.state, "tarpit", None)
    if not request.url.path.startswith("/v1/"):  # the tenants' API; admin routes are the operator's
        return
    sender = getattr(request.state, "tenant", None) or (request.client.host if request.client else "?")
    if tarpit and (delay := tarpit.delay(sender, status)):
        await asyncio.sleep(delay)


async def handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    await held_back(request, 400)
    return refusal(request, validation_error(exc.errors()))


def validation_error(problems) -> APIError:
    """The first problem, phrased as OpenAI does, naming the parameter (`messages[0].content`)."""
    first = most_telling(problems)
    if first.get("type") == "json_invalid":
        return invalid(f"{JSON_HINT} ({first.get('ctx', {}).get('error', 'malformed JSON')} "
                       f"at character {first['loc'][-1]}.)")
    param = parameter(first.get("loc", ()))
    if param is None:
        return invalid(JSON_HINT if first.get("type") in ("model_attributes_type", "dict_type") else
                       f"Invalid request body: {first.get('msg', 'invalid request')}")
    if first.get("type") == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param)
    reason = first.get("msg", "invalid value").removeprefix("Value error, ")
    return invalid(f"Invalid value for '{param}': {reason}.", param)


def most_telling(problems) -> dict:
    """For a union (`prompt: str | list[int]`) pydantic reports each member; the member whose type matched
    but whose value did not says more than "Input should be a valid string"."""
    if not problems:
        return {}
    same = [p for p in problems if parameter(p.get("loc", ())) == parameter(problems[0].get("loc", ()))]
    return next((p for p in same if not p.get("type", "").endswith("_type")), problems[0])


def parameter(loc) -> str | None:
    parts = list(loc)[1:] if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    # pydantic names the union member it tried ("str", "list[int]", "function-after[...]"): not a parameter.
    parts = [p for p in parts if isinstance(p, int) or ("[" not in p and p not in ("str", "int", "dict"))]
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    return text or None


async def handle_http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """The framework's own refusals (unknown path, wrong method, unreadable body) in OpenAI's shape."""
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    elif exc.status_code == 400:
        message = JSON_HINT
    else:
        message = str(exc.detail)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    await held_back(request, exc.status_code)
    return refusal(request, APIError(exc.status_code, message, kind, headers=dict(exc.headers or {})))


async def handle_outage(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: dependency outage: %s", request.method, request.url.path, exc.__class__.__name__)
    return refusal(request, outage(exc))


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return APIError(500, "The server had an error while processing your request.", "server_error").response()
