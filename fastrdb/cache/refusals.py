"""Redis ACL refusals: say once, by name, which command a least-privilege user is missing.

A Redis user whose ACL lacks a command, a key pattern or a channel FastRDB needs gets
``NOPERM`` replies. FastRDB treats them like any Redis failure (reads go to the database,
invalidations are kept and replayed), but a refusal does not heal by waiting: it is a set-up
mistake, so the first one of each kind is logged as an error naming what was refused
(``redis_permission_denied``). A command a Lua script calls is refused without its name; the
log then names the script and every command it calls. See docs/security.md.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoPermissionError

from fastrdb._logging import log
from fastrdb.cache.scripts import by_sha

__all__ = ["Refusal", "note_refusal", "refusal_of"]

_COMMAND = re.compile(r"no permissions to run the '([^']+)' command")
_SCRIPT = re.compile(r"script: ([0-9a-f]{40})")
_SCRIPT_REFUSED = "The user executing the script can't"

HINT = "grant it to the Redis user (ACL SETUSER), see docs/security.md"
KEYS_HINT = (
    "the user's key patterns must cover the app's key patterns, the {…}:lease and {…}:deps keys"
    " beside them and FastRDB's namespace, see docs/security.md"
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """What Redis refused: a ``command``, ``keys`` or a ``channel``."""

    refused: str
    command: str = ""
    """The refused command (``SET``, ``CLIENT|TRACKING``), or the script call (``EVALSHA``)."""
    script: str = ""
    """The FastRDB script whose call was refused, if it was one."""
    script_calls: tuple[str, ...] = ()
    """The commands that script calls: one of them is missing."""


def refusal_of(exc: BaseException) -> Refusal | None:
    """The ACL refusal ``exc`` reports (a redis-py error, or a reply the near cache's own
    connection read), or None if it is no refusal."""
    text = str(exc)
    if text.startswith("NOPERM "):
        text = text[len("NOPERM ") :]
    elif not isinstance(exc, NoPermissionError) and not text.startswith(_SCRIPT_REFUSED):
        return None
    if text.startswith(_SCRIPT_REFUSED):
        found = _SCRIPT.search(text)
        script = by_sha(found.group(1)) if found else None
        refused = "keys" if "access" in text else "command"
        if script is None:
            return Refusal(refused, "EVALSHA")
        return Refusal(refused, "EVALSHA", script.name, script.calls)
    command = _COMMAND.search(text)
    if command is not None:
        return Refusal("command", command.group(1).upper())
    if "channel" in text:
        return Refusal("channel")
    if "key" in text:
        return Refusal("keys")
    return Refusal("command")


_noted: weakref.WeakKeyDictionary[Any, set[tuple[str, Refusal]]] = weakref.WeakKeyDictionary()


def note_refusal(owner: Any, exc: BaseException, operation: str) -> bool:
    """Whether ``exc`` is an ACL refusal; the first of each kind per ``owner`` (a client's
    health record, a tracker, a capture) is logged as ``redis_permission_denied``."""
    refusal = refusal_of(exc)
    if refusal is None:
        return False
    noted = _noted.setdefault(owner, set())
    if (operation, refusal) in noted:
        return True
    noted.add((operation, refusal))
    fields: dict[str, Any] = {"operation": operation, "refused": refusal.refused}
    if refusal.command:
        fields["command"] = refusal.command
    if refusal.script:
        fields["script"] = refusal.script
        fields["script_calls"] = ",".join(refusal.script_calls)
    fields["hint"] = KEYS_HINT if refusal.refused == "keys" else HINT
    log.error("redis_permission_denied", **fields)
    return True
