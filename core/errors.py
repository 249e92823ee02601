"""What a person is told when their request cannot be answered, and the errors of the IO Intelligence API.

`UserError` is the one base of every failure a person can cause or meet (a malformed command, an
image refused, a message too long, a quota spent, the API down): the service turns any of them into
a reply in one place, reading `user_message`, `outcome` and `private` from the error.

The API's errors carry `user_message`: a short sentence safe to show in a chat (no secrets, no raw
bodies). Their `str(error)` carries the detail for operators' logs, with the API key scrubbed.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """How a request ended; a string enum, so it compares equal to its value ("ok", "refused", ...)."""

    OK = "ok"
    USAGE = "usage"  # a command with missing or malformed arguments
    REFUSED = "refused"  # a limit, the input or an image said no before any answer
    DUPLICATE = "duplicate"  # a retried delivery of a request already being answered
    ERROR = "error"  # the API or the bot failed


class Refusal(StrEnum):
    """Why a request was refused (or got its usage line): counted per day for the operator's dashboard."""

    BUDGET = "budget"  # the person's daily budget
    MODEL_QUOTA = "model quota"  # the daily API quota of every model that could answer
    RATE_LIMIT = "rate limit"  # the person's requests per minute
    BUSY = "busy"  # no slot came free in time
    RESTARTING = "restarting"
    BAD_INPUT = "bad input"  # a command's missing or malformed arguments
    TOO_LONG = "too long"  # a message too long for the model or for what is left today
    IMAGE = "image"  # images refused before any was sent
    FILE = "file"  # attached text files or PDFs that could not be read
    OTHER = "other"


class UserError(Exception):
    """A failure the person reads about. `str(error)` is the whole message they read, unless a subclass says otherwise."""

    outcome = Outcome.REFUSED
    refusal = Refusal.OTHER  # the reason counted when `outcome` is a refusal
    private = True  # shown to the person alone where the platform can

    @property
    def user_message(self) -> str:
        return str(self)


class RefusedFile(UserError):
    """An attached file was refused; `str(error)` is a short sentence naming it, fit to show the person.

    Shown where the file was posted (not privately), so that the others there know why no answer came.
    `reason` is a short fixed word for metrics.
    """

    private = False

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class IOIntelligenceError(UserError):
    """Base class: the API could not give an answer."""

    user_message = "The AI service could not answer. Please try again later."
    outcome = Outcome.ERROR
    private = False
    retryable = False

    def __init__(self, detail: str = "", *, status: int | None = None) -> None:
        super().__init__(detail or self.user_message)
        self.detail = detail
        self.status = status


class APIStatusError(IOIntelligenceError):
    """The API answered with an error status."""


class BadRequestError(APIStatusError):
    user_message = "The AI service refused the request as malformed."


class ContextLengthError(BadRequestError):
    """The prompt plus the requested completion exceed the model's context length."""

    user_message = "That is too long for the model: please shorten it."


class AuthenticationError(APIStatusError):
    user_message = "The bot's API key was refused. An operator needs to check it."


class PaymentRequiredError(APIStatusError):
    user_message = "This model needs a higher plan than the bot has."


class PermissionDeniedError(APIStatusError):
    user_message = "The bot's API key may not use this model."


class NotFoundError(APIStatusError):
    user_message = "The AI service does not know that model or endpoint."


class UnprocessableEntityError(APIStatusError):
    user_message = "The AI service could not process the request."


class RateLimitError(APIStatusError):
    """429: too many requests, or the account's quota for the period is spent."""

    user_message = "The AI service is busy or this model's quota is spent. Please try again in a minute."
    retryable = True

    def __init__(self, detail: str = "", *, status: int | None = 429, retry_after: float | None = None) -> None:
        super().__init__(detail, status=status)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    user_message = "The AI service is having trouble. Please try again in a minute."
    retryable = True


class APITimeoutError(IOIntelligenceError):
    user_message = "The AI service took too long to answer. Please try again."


class APIConnectionError(IOIntelligenceError):
    user_message = "The AI service cannot be reached right now. Please try again later."
    retryable = True


class StreamInterruptedError(IOIntelligenceError):
    """A streamed answer stopped before its end."""

    user_message = "The answer was cut off by the AI service. Please try again."


class UnexpectedResponseError(IOIntelligenceError):
    """A 2xx answer whose body is not what the API contract says."""

    user_message = "The AI service sent an answer the bot could not read."


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: PaymentRequiredError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def error_for_status(status: int, detail: str, retry_after: float | None = None) -> APIStatusError:
    """The named error for an HTTP error status."""
    if status == 429:
        return RateLimitError(detail, status=status, retry_after=retry_after)
    if status >= 500:
        return ServerError(detail, status=status)
    if status == 400 and "context length" in detail.lower():
        return ContextLengthError(detail, status=status)
    return _BY_STATUS.get(status, APIStatusError)(detail, status=status)
