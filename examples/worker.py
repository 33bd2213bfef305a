"""A background worker: a synchronous Session and a blocking Redis client.

It imports only the models, never the app's FastRDB instances: ``listen()`` reads the key
patterns the app published in Redis, so each commit here drops the app's stale entries.

    DATABASE_URL=... REDIS_URL=... python examples/worker.py --visits 10
    DATABASE_URL=... REDIS_URL=... python examples/worker.py --rename a@x.io "New Name"

With ``--tag T`` each visit also renames the user to ``T-<n>`` and prints ``begin ID NAME
TIME`` before its write and ``visit ID NAME TIME`` once ``commit()`` returned (CLOCK_MONOTONIC
microseconds), for a history checker such as ``scripts/soak``, which also sets
FASTRDB_WORKER_HOOK (``module:function``, called with the sessionmaker) to add its chaos.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.embedded import sync_redis, sync_url
from examples.models import User
from fastrdb.events import listen


def announce(what: str, user: int, name: str) -> str:
    """Say ``what`` happened to ``user``'s new ``name`` and when (CLOCK_MONOTONIC, µs)."""
    print(f"{what} {user} {name} {time.monotonic() * 1e6:.0f}", flush=True)
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rename", nargs=2, metavar=("EMAIL", "NAME"))
    parser.add_argument("--visits", type=int, default=0, help="count this many random visits")
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--hot", type=int, default=0, help="visit only users with id <= HOT")
    parser.add_argument("--tag", help="also rename each visited user to TAG-<n>, and say when")
    args = parser.parse_args()

    engine = create_engine(sync_url(os.environ["DATABASE_URL"]))
    sessions = sessionmaker(engine)
    client = sync_redis(os.environ["REDIS_URL"], socket_timeout=0.5)
    handle = listen(sessions, client)
    hook = os.environ.get("FASTRDB_WORKER_HOOK")
    if hook:
        module, _, function = hook.partition(":")
        getattr(importlib.import_module(module), function)(sessions)

    if args.rename:
        email, name = args.rename
        with sessions() as session:  # a plain ORM change
            user = session.execute(select(User).where(User.email == email)).scalar_one()
            user.name = name
            session.commit()
        print(f"renamed {email} to {name}")
    candidates = select(User.id).where(User.id <= args.hot) if args.hot else select(User.id)
    for number in range(1, args.visits + 1):
        with sessions() as session:  # a bulk UPDATE with an SQL expression
            ids = session.execute(candidates).scalars().all()
            if ids:
                chosen = random.choice(ids)
                values: dict[str, Any] = {"visits": User.visits + 1}
                if args.tag:  # a new name too, announced before and after (for scripts/soak)
                    values["name"] = announce("begin", chosen, f"{args.tag}-{number}")
                session.execute(update(User).where(User.id == chosen).values(**values))
                session.commit()
                if args.tag:
                    announce("visit", chosen, values["name"])
                else:
                    print(f"visit for user {chosen}")
        time.sleep(args.interval)

    handle.remove()
    client.close()
    engine.dispose()


if __name__ == "__main__":
    main()
