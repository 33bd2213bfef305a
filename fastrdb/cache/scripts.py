"""The Lua scripts FastRDB runs, loaded from package data once and called by SHA."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from functools import cached_property
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from fastrdb.cache import wire

__all__ = ["DRAIN", "DROP", "FILL", "INVALIDATE", "LEASE", "RELEASE", "LuaScript", "by_sha"]

Arg = str | int | bytes

_CALL = re.compile(r"redis\.p?call\('([A-Z]+)'")


class LuaScript:
    """One ``.lua`` file of ``fastrdb/cache/lua``, run with EVALSHA (EVAL when not loaded yet)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @cached_property
    def source(self) -> str:
        return resources.files("fastrdb.cache").joinpath("lua", f"{self.name}.lua").read_text()

    @cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()

    @cached_property
    def calls(self) -> tuple[str, ...]:
        """The Redis commands the script calls (``redis.call('DEL', …)``), sorted."""
        return tuple(sorted(set(_CALL.findall(self.source))))

    async def run_async(
        self, client: Any, keys: Sequence[str], args: Sequence[Arg], direct: bool = False
    ) -> Any:
        """Run on an asyncio client (``direct``: by :func:`fastrdb.cache.wire.command`)."""
        try:
            if direct:
                return await wire.command(client, "EVALSHA", self.sha, len(keys), *keys, *args)
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)

    def run(
        self,
        call: Callable[[Any], Any],
        client: Any,
        keys: Sequence[str],
        args: Sequence[Arg],
        direct: bool = False,
    ) -> Any:
        """Run on any client; ``call`` turns the client's return value into the reply
        (``direct``: an asyncio client's, sent by :func:`fastrdb.cache.wire.command`)."""
        try:
            if direct:
                return call(wire.command(client, "EVALSHA", self.sha, len(keys), *keys, *args))
            return call(client.evalsha(self.sha, len(keys), *keys, *args))
        except NoScriptError:
            return call(client.eval(self.source, len(keys), *keys, *args))


DRAIN = LuaScript("drain")
DROP = LuaScript("drop")
FILL = LuaScript("fill")
RELEASE = LuaScript("release")
INVALIDATE = LuaScript("invalidate")
LEASE = LuaScript("lease")

ALL = (DRAIN, DROP, FILL, INVALIDATE, LEASE, RELEASE)


def by_sha(sha: str) -> LuaScript | None:
    """The script whose SHA1 is ``sha`` (as Redis names it in errors), if it is FastRDB's."""
    return next((script for script in ALL if script.sha == sha), None)
