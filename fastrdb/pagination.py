"""The paginated response model."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel

__all__ = ["PaginatedResponse"]

T = TypeVar("T")


class PaginatedResponse(BaseModel, Generic[T]):
    """A page of results with the paging parameters that produced it."""

    data: list[T]
    total: int
    limit: int
    page: int
