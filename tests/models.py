"""Models the tests share: the seed guide's dataclass ``User``, and plain declarative models
with composite and non-``id`` primary keys."""

from __future__ import annotations

import enum
import itertools
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    Numeric,
    String,
    Table,
    Uuid,
    func,
)
from sqlalchemy import Enum as SQLEnum
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


# -- The generative checker's models (tests/test_generative.py), on their own metadata --------
# One wide table whose columns each carry a pattern of a family of issue 11 (typed values,
# None, a renamed column, an onupdate column, collation-sensitive text), a joined and a
# single-table hierarchy, a parent with delete-orphan children (no backref), and books that
# embed their author.


class GenBase(DeclarativeBase):
    pass


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


_gen_seq = itertools.count(1000)


def next_gen_seq() -> int:
    """The Python ``onupdate`` of ``GenUser.seq``: a new value on every UPDATE."""
    return next(_gen_seq)


class GenUser(GenBase):
    __tablename__ = "gen_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    email: Mapped[str] = mapped_column(String(40), unique=True)  # a pattern names one row
    name: Mapped[str] = mapped_column(String(40))
    code: Mapped[str | None] = mapped_column(String(20), nullable=True)
    cat: Mapped[str] = mapped_column(String(10))
    color: Mapped[Color] = mapped_column(SQLEnum(Color, name="gen_color"))
    token: Mapped[uuid.UUID] = mapped_column(Uuid)
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    flag: Mapped[bool] = mapped_column(Boolean)
    mail: Mapped[str] = mapped_column("mail_col", String(40))
    seq: Mapped[int] = mapped_column(Integer, default=0, onupdate=next_gen_seq)


class GenUserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    name: str
    code: str | None
    cat: str
    color: Color
    token: uuid.UUID
    amount: Decimal
    flag: bool
    mail: str
    seq: int


class GenUserCreate(BaseModel):
    id: int
    email: str
    name: str
    code: str | None
    cat: str
    color: Color
    token: uuid.UUID
    amount: Decimal
    flag: bool
    mail: str


class GenUserUpdate(BaseModel):
    email: str | None = None
    name: str | None = None
    code: str | None = None
    cat: str | None = None
    color: Color | None = None
    token: uuid.UUID | None = None
    amount: Decimal | None = None
    flag: bool | None = None
    mail: str | None = None


class GenEmployee(GenBase):
    """Joined-table inheritance: the base."""

    __tablename__ = "gen_employees"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(40))
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "employee",
    }


class GenManager(GenEmployee):
    __tablename__ = "gen_managers"

    id: Mapped[int] = mapped_column(ForeignKey("gen_employees.id"), primary_key=True)
    level: Mapped[int] = mapped_column(Integer)
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "manager"}


class GenEmployeeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    name: str


class GenManagerOut(GenEmployeeOut):
    level: int


class GenAnimal(GenBase):
    """Single-table inheritance: the base."""

    __tablename__ = "gen_animals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(40))
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "animal",
    }


class GenDog(GenAnimal):
    breed: Mapped[str | None] = mapped_column(String(20), nullable=True)
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "dog"}


class GenAnimalOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    name: str


class GenDogOut(GenAnimalOut):
    breed: str | None


class GenKid(GenBase):
    __tablename__ = "gen_kids"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    parent_id: Mapped[int] = mapped_column(ForeignKey("gen_parents.id"))
    label: Mapped[str] = mapped_column(String(20))


class GenParent(GenBase):
    """Children removed from ``kids`` are deleted at flush (delete-orphan, no backref)."""

    __tablename__ = "gen_parents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(20))
    kids: Mapped[list[GenKid]] = relationship(cascade="all, delete-orphan", lazy="selectin")


class GenKidOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    parent_id: int
    label: str


class GenAuthor(GenBase):
    __tablename__ = "gen_authors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))


class GenBook(GenBase):
    __tablename__ = "gen_books"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(40))
    author_id: Mapped[int] = mapped_column(ForeignKey("gen_authors.id"))
    author: Mapped[GenAuthor] = relationship(lazy="joined")


class GenAuthorOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str


class GenBookOut(BaseModel):
    """A response schema that embeds a related row (issue 11, family 16)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    author: GenAuthorOut


from tests.models_writes import WritesBase  # noqa: E402

ALL_METADATA = (DataclassBase.metadata, PlainBase.metadata, GenBase.metadata, WritesBase.metadata)
