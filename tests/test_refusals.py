"""ACL refusals are recognized from Redis' own messages and named (pure: the replies are the
ones Redis 7 sends; tests/test_security.py gets them from a real server)."""

from __future__ import annotations

from redis.exceptions import ConnectionError, NoPermissionError, ResponseError
from structlog.testing import capture_logs

from fastrdb.cache.refusals import Refusal, note_refusal, refusal_of
from fastrdb.cache.scripts import FILL, LEASE


def test_a_refused_command_is_named() -> None:
    """NOPERM for a command: its name, upper case, subcommands kept."""
    refused = NoPermissionError("this user has no permissions to run the 'client|tracking' command")
    assert refusal_of(refused) == Refusal("command", "CLIENT|TRACKING")


def test_a_reply_read_by_the_near_cache_is_recognized_too() -> None:
    """The tracking connection reads raw replies: the NOPERM prefix is still there."""
    refused = RuntimeError("NOPERM this user has no permissions to run the 'subscribe' command")
    assert refusal_of(refused) == Refusal("command", "SUBSCRIBE")


def test_keys_and_channels_are_told_apart() -> None:
    """A missing key pattern or channel says which of the two."""
    keys = NoPermissionError(
        "this user has no permissions to access one of the keys used as arguments"
    )
    channel = NoPermissionError(
        "this user has no permissions to access one of the channels used as arguments"
    )
    assert refusal_of(keys) == Refusal("keys")
    assert refusal_of(channel) == Refusal("channel")


def test_a_command_refused_inside_a_script_names_the_script_and_its_calls() -> None:
    """Redis names only the script's SHA1: the refusal names FastRDB's script and what it
    calls."""
    refused = ResponseError(
        "The user executing the script can't run this command or subcommand script: "
        f"{FILL.sha}, on @user_script:1."
    )
    assert refusal_of(refused) == Refusal("command", "EVALSHA", "fill", ("DEL", "GET", "SET"))
    keys = ResponseError(
        "The user executing the script can't access at least one of the keys mentioned in the "
        f"command arguments script: {LEASE.sha}, on @user_script:3."
    )
    found = refusal_of(keys)
    assert found is not None and (found.refused, found.script) == ("keys", "lease")
    unknown = ResponseError(
        "The user executing the script can't run this command or subcommand script: "
        f"{'0' * 40}, on @user_script:1."
    )
    assert refusal_of(unknown) == Refusal("command", "EVALSHA")


def test_other_errors_are_no_refusal() -> None:
    """Outages and other error replies are not refusals (they may heal by waiting)."""
    for error in (
        ConnectionError("Error 111 connecting to 127.0.0.1:6379"),
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        TimeoutError(),
    ):
        assert refusal_of(error) is None


def test_a_refusal_is_logged_once_per_owner_and_kind() -> None:
    """The same refusal again for the same owner is not logged again; another owner, or
    another command, is."""

    class Owner:
        pass

    first, second = Owner(), Owner()
    get = NoPermissionError("this user has no permissions to run the 'get' command")
    mget = NoPermissionError("this user has no permissions to run the 'mget' command")
    with capture_logs() as logs:
        assert note_refusal(first, get, "get")
        assert note_refusal(first, get, "get")
        assert note_refusal(first, mget, "peek")
        assert note_refusal(second, get, "get")
        assert not note_refusal(first, TimeoutError(), "get")
    assert [(e["event"], e["operation"], e["command"]) for e in logs] == [
        ("redis_permission_denied", "get", "GET"),
        ("redis_permission_denied", "peek", "MGET"),
        ("redis_permission_denied", "get", "GET"),
    ]
    assert all(entry["log_level"] == "error" for entry in logs)
