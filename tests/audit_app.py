"""The application module the audit tests point ``fastrdb audit --app`` at: several instances."""

from __future__ import annotations

from fastrdb import FastRDB
from tests.models import (
    Item,
    ItemSchema,
    ItemUpdate,
    User,
    UserCreate,
    UserResponse,
    UserUpdate,
    Verse,
    VerseSchema,
    VerseUpdate,
)

users = FastRDB[User, UserCreate, UserUpdate, UserResponse](
    User, UserResponse, pattern="user:email:{email}", list_pattern="user:page:{page}:limit:{limit}"
)
items = FastRDB[Item, ItemSchema, ItemUpdate, ItemSchema](Item, ItemSchema, pattern="item:{sku}")
verses = FastRDB[Verse, VerseSchema, VerseUpdate, VerseSchema](
    Verse,
    VerseSchema,
    pattern="verse:{chapter_id}:{verse_id}",
    list_pattern="verse:chapter:{chapter_id}:page:{page}:limit:{limit}",
)
not_an_instance = "users"
