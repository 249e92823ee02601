"""The API's error answers, in the shapes its clients read: OpenAI's `error`, FastAPI's 422 `detail`, vLLM's own."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aiohttp import web

# OpenAI's `error.type` for each status; other statuses are "server_error" (5xx) or "invalid_request_error".
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


class ApiError(Exception):
    """An error answer, raised where it is found and sent as JSON by the dispatcher.

    Its body reads right to both kinds of client: FastAPI-style ones read `detail` (the message, or
    the list of validation errors), OpenAI-style ones `error.message` (the official `openai` client
    shows only that). `extra` adds top-level fields, such as vLLM's own.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        detail: Any = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers
        kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.body = {
            **(extra or {}),
            "detail": message if detail is None else detail,
            "error": {"message": message, "type": kind, "param": None, "code": status},
        }

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status, headers=self.headers)


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def field_error(loc: list[str | int], msg: str, type_: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type_}


def missing(loc: list[str | int]) -> dict[str, Any]:
    return field_error(loc, "Field required", "missing")


def unprocessable(errors: list[dict[str, Any]]) -> ApiError:
    """FastAPI's 422: the list of errors as `detail`, and one line of them as the message."""
    message = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in errors)
    return ApiError(422, message, detail=errors)


def require_object(body: Any) -> None:
    if body is None:
        raise unprocessable([missing(["body"])])
    if not isinstance(body, dict):
        raise unprocessable([field_error(["body"], "Input should be a valid dictionary", "dict_type")])


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def context_error(limit: int, prompt_tokens: int, completion_tokens: int) -> ApiError:
    """vLLM's own words for a request over the model's context length."""
    message = (
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{prompt_tokens + completion_tokens} tokens ({prompt_tokens} in the messages, {completion_tokens} in "
        "the completion). Please reduce the length of the messages or completion."
    )
    vllm = {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}
    return ApiError(400, message, extra=vllm)
