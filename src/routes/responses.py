"""JSON responses serialized once by pydantic's Rust core, skipping FastAPI's re-validation."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel, TypeAdapter

_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def model_response(value: BaseModel | list[Any], status_code: int = 200) -> Response:
    """Serialize a model (or a list of one model type) straight to JSON bytes."""
    if isinstance(value, BaseModel):
        body = value.__pydantic_serializer__.to_json(value)
    else:
        kind = type(value[0]) if value else object
        adapter = _ADAPTERS.get(kind)
        if adapter is None:
            adapter = _ADAPTERS[kind] = TypeAdapter(list[kind])  # type: ignore[valid-type]  # a type known at run time: one adapter per model class
        body = adapter.dump_json(value)
    return Response(body, status_code=status_code, media_type="application/json")
