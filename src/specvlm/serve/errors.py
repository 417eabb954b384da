"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

from __future__ import annotations

from typing import Any

from specvlm.errors import GenerationArgumentError, ImageError, InputError, PromptError


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def from_input_error(e: InputError) -> ApiError:
    """A library `InputError` (the user's fault) -> 400, its code naming the kind."""
    if isinstance(e, PromptError):
        code = "context_length_exceeded" if "context" in str(e) else "invalid_prompt"
        return bad_request(str(e), param="messages", code=code)
    if isinstance(e, ImageError):
        return bad_request(str(e), param="messages", code="invalid_image")
    if isinstance(e, GenerationArgumentError):
        return bad_request(str(e), code="invalid_value")
    return bad_request(str(e), code="invalid_request")
