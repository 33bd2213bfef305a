"""Models the tests share: the seed guide's dataclass ``User``, and plain declarative models
with composite and non-``id`` primary keys."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Boolean, Column, DateTime, ForeignKey, Integer, String, Table, func
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    mapped_column,
    relationship,
)


class DataclassBase(MappedAsDataclass, DeclarativeBase):
    pass


class PlainBase(DeclarativeBase):
    pass


class User(DataclassBase):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(255), nullable=False, unique=True, index=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    bio: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), onupdate=func.now(), server_default=func.now(), nullable=False
    )
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)


class Verse(PlainBase):
    __tablename__ = "verses"

    chapter_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    verse_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(String(200))


class Item(PlainBase):
    __tablename__ = "items"

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    price: Mapped[int] = mapped_column(Integer)
    counter: Mapped[int] = mapped_column(Integer, default=0)


class UserCreate(BaseModel):
    email: str
    name: str
    bio: str | None = None
    is_active: bool = True


class UserUpdate(BaseModel):
    email: str | None = None
    name: str | None = None
    bio: str | None = None
    is_active: bool | None = None


class UserResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    name: str
    bio: str | None = None
    is_active: bool
    created_at: datetime
    updated_at: datetime


class VerseSchema(BaseModel):
    chapter_id: int
    verse_id: int
    text: str


class VerseUpdate(BaseModel):
    text: str | None = None
    chapter_id: int | None = None


class ItemSchema(BaseModel):
    sku: str
    name: str
    price: int
    counter: int = 0


class ItemUpdate(BaseModel):
    name: str | None = None
    price: int | None = None
    counter: int | None = None


class Author(PlainBase):
    __tablename__ = "authors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(100))
    books: Mapped[list[Book]] = relationship(back_populates="author")


book_tags = Table(
    "book_tags",
    PlainBase.metadata,
    Column("book_id", ForeignKey("books.id"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id"), primary_key=True),
)


class Book(PlainBase):
    __tablename__ = "books"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(100))
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")
    tags: Mapped[list[Tag]] = relationship(secondary=book_tags)


class Tag(PlainBase):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(String(50))


class AuthorOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str


class TagOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    label: str


class BookCreate(BaseModel):
    id: int
    title: str
    author_id: int


class BookUpdate(BaseModel):
    title: str | None = None
    author_id: int | None = None


class BookOut(BaseModel):
    """A book as a FastAPI app returns it: with its author and tags embedded."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    author: AuthorOut
    tags: list[TagOut] = []


ALL_METADATA = (DataclassBase.metadata, PlainBase.metadata)
