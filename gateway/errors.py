"""OpenAI-shaped errors: the only way a failure reaches a tenant (never a stack trace)."""
from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


async def handle_api_error(_: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def handle_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", []) if p != "body"]
    param = ".".join(loc) or None
    message = f"Invalid value for '{param}': {first.get('msg', 'invalid request')}" if param else "Invalid request body"
    return invalid(message, param).response()


async def handle_unexpected(_: Request, exc: Exception) -> JSONResponse:
    return APIError(500, "The server had an error while processing your request.", "server_error").response()
