"""Models for the write-side coherence tests: inheritance, a renamed column, delete-orphan
without a backref, ``onupdate`` columns, a Numeric pattern field, a ``post_update``
relationship."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ForeignKey, Integer, Numeric, String, literal_column
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class WritesBase(DeclarativeBase):
    pass


class Employee(WritesBase):
    __tablename__ = "employees"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "employee",
    }


class Manager(Employee):
    __tablename__ = "managers"

    id: Mapped[int] = mapped_column(ForeignKey("employees.id"), primary_key=True)
    dept: Mapped[str] = mapped_column(String(50))
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "manager"}


class Engineer(Employee):
    """Single-table inheritance under a joined hierarchy's base."""

    lang: Mapped[str | None] = mapped_column(String(20), nullable=True)
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "engineer"}


class Acct(WritesBase):
    __tablename__ = "accts"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    email_addr: Mapped[str] = mapped_column("mail", String(100), unique=True)
    name: Mapped[str] = mapped_column(String(50))


class Parent(WritesBase):
    __tablename__ = "parents"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kids: Mapped[list[Kid]] = relationship(cascade="all, delete-orphan")


class Kid(WritesBase):
    __tablename__ = "kids"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("parents.id"), nullable=True)
    name: Mapped[str] = mapped_column(String(50))


_revisions = itertools.count(100)


class Stamped(WritesBase):
    __tablename__ = "stamped"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    rev: Mapped[int] = mapped_column(Integer, default=1, onupdate=lambda: next(_revisions))
    seq: Mapped[int] = mapped_column(Integer, default=1, onupdate=literal_column("seq") + 1)


class Priced(WritesBase):
    __tablename__ = "priced"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    name: Mapped[str] = mapped_column(String(50))


class Tally(WritesBase):
    """A row with an integer pattern field (MariaDB keeps negative entries for it)."""

    __tablename__ = "tallies"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(Integer)


class Node(WritesBase):
    """A row whose foreign key the unit of work sets in a second UPDATE (``post_update``)."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    buddy_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id"), nullable=True)
    buddy: Mapped[Node | None] = relationship(remote_side=[id], post_update=True)


class EmployeeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str


class ManagerOut(EmployeeOut):
    dept: str


class AcctOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    email_addr: str
    name: str


class KidOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str


class StampedOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    rev: int
    seq: int


class NodeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    buddy_id: int | None


class TallyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    n: int


class PricedOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    price: Decimal
    name: str
