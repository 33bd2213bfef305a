"""Commands packed by hiredis for the asyncio clients the command line makes.

redis-py's blocking client packs a command with ``hiredis.pack_command`` when hiredis is
installed; its asyncio client packs each argument in Python. Capture's delivery is one
script call naming every key a batch drops (and as many lease tokens): packed in Python,
about 1.4 µs per argument, the most expensive step per changed row after reading the log.
:func:`pack_with_hiredis` gives a client's connections the blocking client's packing (the
same bytes, the same errors), whatever their transport (TCP, TLS, Unix socket).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio
from redis.exceptions import DataError

__all__ = ["pack_with_hiredis"]


class _HiredisPacking:
    """Mixed into a connection class ahead of it: ``pack_command`` by hiredis."""

    def pack_command(self, *args: Any) -> list[bytes]:
        import hiredis

        first = args[0]
        if isinstance(first, str):
            args = tuple(first.encode().split()) + args[1:]
        elif b" " in first:
            args = tuple(first.split()) + args[1:]
        args = tuple(bytes(arg) if isinstance(arg, bytearray | memoryview) else arg for arg in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(exc) from exc


_CLASSES: dict[type, type] = {}


def pack_with_hiredis(client: redis.asyncio.Redis) -> None:
    """Make ``client``'s connections pack commands with hiredis, if it is installed and the
    client encodes text as UTF-8 (hiredis' encoding). Connections made from now on."""
    try:
        import hiredis
    except ImportError:
        return
    pool = client.connection_pool
    encoding = pool.connection_kwargs.get("encoding", "utf-8")
    errors = pool.connection_kwargs.get("encoding_errors", "strict")
    if not hasattr(hiredis, "pack_command") or (encoding, errors) != ("utf-8", "strict"):
        return
    base = pool.connection_class
    if issubclass(base, _HiredisPacking):
        return
    packed = _CLASSES.get(base)
    if packed is None:
        packed = _CLASSES[base] = type(f"HiredisPacked{base.__name__}", (_HiredisPacking, base), {})
    pool.connection_class = packed
