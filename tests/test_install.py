"""FastRDB installs as a user installs it: a wheel with no extras in a fresh virtualenv."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import fastrdb

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import fastrdb, fastrdb.events
from importlib import metadata, resources, util
assert all(util.find_spec(name) is None for name in ("asyncpg", "aiosqlite", "fastapi"))
assert fastrdb.__version__ == metadata.version("fastrdb"), fastrdb.__version__
lua = sorted(p.name for p in resources.files("fastrdb.cache").joinpath("lua").iterdir())
scripts = ["drain", "drop", "fill", "invalidate", "lease", "release"]
assert lua == [f"{name}.lua" for name in scripts], lua
assert resources.files("fastrdb").joinpath("py.typed").is_file()
from fastrdb.cache.scripts import LEASE
assert "SET" in LEASE.source
print("ok", fastrdb.__version__, fastrdb.__file__)
"""


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in argv], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def venv(path: Path) -> Path:
    """A new virtualenv without pip (this interpreter's pip installs into it)."""
    run(sys.executable, "-m", "venv", "--without-pip", path)
    return path / "bin" / "python"


def pip_install(python: Path, *requirements: str | Path) -> None:
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", *requirements)


def project_urls() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        urls: dict[str, str] = tomllib.load(file)["project"]["urls"]
    return urls


def test_project_urls_follow_the_repository_layout() -> None:
    """pyproject names Homepage, Documentation, Changelog and Issues: the others are paths under
    the homepage, and the ones into the tree (docs/, CHANGELOG.md) exist in this one."""
    urls = project_urls()
    assert set(urls) == {"Homepage", "Documentation", "Changelog", "Issues"}
    home = urls["Homepage"]
    assert home.startswith("https://") and not home.endswith("/")
    assert urls["Issues"] == home + "/issues"
    for label, kind, path in (
        ("Documentation", "tree", "docs"),
        ("Changelog", "blob", "CHANGELOG.md"),
    ):
        assert urls[label] == f"{home}/{kind}/main/{path}"
        assert (ROOT / path).exists(), path


@pytest.mark.slow
def test_the_wheel_installs_and_works_without_extras(tmp_path: Path) -> None:
    """Build the sdist and the wheel from the source tree, install the wheel with no extras in
    a fresh virtualenv: fastrdb and fastrdb.events import, the Lua scripts and py.typed are
    found, and LICENSE ships in both distributions."""
    builder = venv(tmp_path / "build-env")
    pip_install(builder, "hatchling>=1.27")
    dist = tmp_path / "dist"
    dist.mkdir()
    run(
        builder,
        "-c",
        "import sys, hatchling.build as b; b.build_sdist(sys.argv[1]); b.build_wheel(sys.argv[1])",
        dist,
        cwd=ROOT,
    )
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    assert wheel.name.startswith(f"fastrdb-{fastrdb.__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), names
    assert "fastrdb/py.typed" in names and "fastrdb/cache/lua/lease.lua" in names
    (metadata_name,) = (name for name in names if name.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(metadata_name).decode()
    for label, url in project_urls().items():
        assert f"Project-URL: {label}, {url}" in metadata, metadata
    assert not any(name.startswith(("tests/", "examples/", "bench/")) for name in names)
    with tarfile.open(sdist) as archive:
        members = {
            Path(name).relative_to(Path(name).parts[0]).as_posix() for name in archive.getnames()
        }
    assert {"LICENSE", "README.md", "docs/logging.md", "fastrdb/cache/lua/lease.lua"} <= members

    python = venv(tmp_path / "user-env")
    pip_install(python, wheel)
    out = run(python, "-c", CHECK, cwd=tmp_path)
    assert out.startswith(f"ok {fastrdb.__version__} {tmp_path / 'user-env'}"), out
