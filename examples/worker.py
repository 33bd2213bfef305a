"""A background worker: a synchronous Session and a blocking Redis client.

It imports only the models, never the app's FastRDB instances: ``listen()`` reads the key
patterns the app published in Redis, so each commit here drops the app's stale entries.

    DATABASE_URL=... REDIS_URL=... python examples/worker.py --visits 10
    DATABASE_URL=... REDIS_URL=... python examples/worker.py --rename a@x.io "New Name"
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import redis
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.embedded import sync_url
from examples.models import User
from fastrdb.events import listen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rename", nargs=2, metavar=("EMAIL", "NAME"))
    parser.add_argument("--visits", type=int, default=0, help="count this many random visits")
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args()

    engine = create_engine(sync_url(os.environ["DATABASE_URL"]))
    sessions = sessionmaker(engine)
    client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=0.5)
    handle = listen(sessions, client)

    if args.rename:
        email, name = args.rename
        with sessions() as session:  # a plain ORM change
            user = session.execute(select(User).where(User.email == email)).scalar_one()
            user.name = name
            session.commit()
        print(f"renamed {email} to {name}")
    for _ in range(args.visits):
        with sessions() as session:  # a bulk UPDATE with an SQL expression
            ids = session.execute(select(User.id)).scalars().all()
            if ids:
                chosen = random.choice(ids)
                session.execute(
                    update(User).where(User.id == chosen).values(visits=User.visits + 1)
                )
                session.commit()
                print(f"visit for user {chosen}")
        time.sleep(args.interval)

    handle.remove()
    client.close()
    engine.dispose()


if __name__ == "__main__":
    main()
