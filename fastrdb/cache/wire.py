"""One command on a plain asyncio redis-py client by the shortest way its connection API allows.

``client.execute_command`` wraps every command in machinery FastRDB's calls don't use: a
retry policy (FastRDB counts a failed call and serves from the database instead), per-command
metrics hooks, a packer written in Python and, with a socket timeout (``Redis.from_url(url)``
sets 5 s in redis-py 8), an ``asyncio.wait_for`` task per command and a timer per reply. On
the hit path and at commit those cost more than FastRDB's own work. :func:`command` instead
borrows a connection from the client's pool (so its size, its checks of idle connections and
its release hooks still apply), packs with hiredis, and sends and reads through the
connection's public methods, which close it on any error or cancellation as
``execute_command`` does. Its caller must bound the call in time
(:func:`fastrdb.cache.deadline.within`): the client's socket timeout is lifted for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio

_Pack = Callable[[tuple[str | bytes | int, ...]], bytes]
_pack: _Pack | None
try:
    from hiredis import pack_command as _pack  # type: ignore[assignment]  # its stub: a 1-tuple
except ImportError:  # a dependency (redis[hiredis]); without it, redis-py's own packer
    _pack = None

__all__ = ["command", "direct"]


def direct(client: Any) -> bool:
    """Whether :func:`command` can take ``client``'s commands: a plain ``redis.asyncio.Redis``
    (not a cluster, not a single-connection client) speaking RESP2 in UTF-8, as hiredis packs."""
    if not isinstance(client, redis.asyncio.Redis) or client.single_connection_client:
        return False
    kwargs = getattr(client.connection_pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return False
    encoding = str(kwargs.get("encoding", "utf-8")).lower().replace("_", "-")
    return encoding in ("utf-8", "utf8") and str(kwargs.get("protocol") or 2) == "2"


async def command(client: Any, *args: str | bytes | int) -> Any:
    """Send one command and return its reply, raised if it is an error, with no response
    callback applied (meant for GET and EVALSHA, which have none). A full pool raises
    ``MaxConnectionsError`` as ``execute_command`` would."""
    pool = client.connection_pool
    connection = await pool.get_connection()
    timeout = connection.socket_timeout
    connection.socket_timeout = None  # the caller bounds the call; see the module's docstring
    try:
        packed = connection.pack_command(*args) if _pack is None else _pack(args)
        await connection.send_packed_command(packed)
        return await connection.read_response()
    finally:
        connection.socket_timeout = timeout
        await pool.release(connection)
