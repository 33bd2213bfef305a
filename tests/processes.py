"""Run Python code in a separate OS process, from async tests."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


async def start_python(
    code: str, *args: str, stdin: int | None = None
) -> asyncio.subprocess.Process:
    """Start ``python -c code args…`` rooted at the repository."""
    return await start_interpreter("-c", code, *args, stdin=stdin)


async def start_interpreter(*argv: str, stdin: int | None = None) -> asyncio.subprocess.Process:
    """Start ``python argv…`` rooted at the repository, its output captured (and its input
    a pipe with ``stdin=asyncio.subprocess.PIPE``)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process) -> Finished:
    async with asyncio.timeout(120):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())


async def run_python(code: str, *args: str) -> Finished:
    """Run ``code`` with ``args`` in a new interpreter rooted at the repository."""
    return await finish(await start_python(code, *args))


async def run_script(path: Path, *args: str) -> Finished:
    """Run the script at ``path`` with ``args`` in a new interpreter."""
    return await finish(await start_interpreter(str(path), *args))
