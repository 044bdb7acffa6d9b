"""Requirements of `make test-lowest`: the lowest versions pyproject.toml allows.

    python .ci/lowest.py           print the requirements: every [project] dependency,
                                   the packages of LOWEST pinned to their lower bound,
                                   the embedded database and the test tools
    python .ci/lowest.py --check   in the venv that installed them: print the versions of
                                   LOWEST and fail unless each is its lower bound

LOWEST are the packages whose APIs (public and, through realtime/_compat.py,
private) the server's WebSocket path depends on; the other dependencies resolve
as usual. Everything comes from pyproject.toml, nothing is copied by hand.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

#: Pinned to their lower bound.
LOWEST = ("fastapi", "starlette", "uvicorn", "websockets", "motor", "pymongo")
#: What the tests need besides the project and its embedded database (from the dev extra).
TEST_TOOLS = ("pytest", "pytest-asyncio", "pytest-timeout")

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _split(requirement: str) -> tuple[str, str, str]:
    """``name``, ``[extras]`` and the version specifiers of a PEP 508 requirement."""
    match = _REQUIREMENT.match(requirement)
    if match is None or ";" in requirement:
        raise SystemExit(f"lowest.py: cannot read requirement {requirement!r}")
    name, extras, specifiers = match.groups()
    return name, extras or "", specifiers.strip()


def lower_bound(specifiers: str) -> str | None:
    """The version of the ``>=`` specifier in ``specifiers``, if there is one."""
    for spec in specifiers.split(","):
        spec = spec.strip()
        if spec.startswith(">="):
            return spec[2:].strip()
    return None


def _project() -> dict[str, Any]:
    with PYPROJECT.open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def pins() -> dict[str, str]:
    """``{name: lowest allowed version}`` for each package of :data:`LOWEST`.

    Raises:
        SystemExit: one is not a dependency, or has no ``>=`` lower bound.
    """
    found: dict[str, str] = {}
    for requirement in _project()["dependencies"]:
        name, _, specifiers = _split(requirement)
        if _canonical(name) in LOWEST:
            bound = lower_bound(specifiers)
            if bound is None:
                raise SystemExit(f"lowest.py: {requirement!r} has no >= lower bound")
            found[_canonical(name)] = bound
    missing = [name for name in LOWEST if name not in found]
    if missing:
        raise SystemExit(f"lowest.py: not in [project] dependencies: {', '.join(missing)}")
    return found


def requirements() -> list[str]:
    """The lines of the requirements file (see the module docstring)."""
    project = _project()
    lowest = pins()
    lines = []
    for requirement in project["dependencies"]:
        name, extras, _ = _split(requirement)
        bound = lowest.get(_canonical(name))
        lines.append(requirement if bound is None else f"{name}{extras}=={bound}")
    extras = project["optional-dependencies"]
    lines.extend(extras["embedded"])
    tools = [r for r in extras["dev"]
             if _canonical(_split(r)[0]) in TEST_TOOLS]
    if len(tools) != len(TEST_TOOLS):
        raise SystemExit(f"lowest.py: the dev extra lacks one of {', '.join(TEST_TOOLS)}")
    lines.extend(tools)
    return lines


def _release(version: str) -> tuple[int, ...]:
    """``0.115`` and ``0.115.0`` alike (PEP 440 pads releases with zeros)."""
    numbers = [int(n) for n in re.findall(r"\d+", version.split("+")[0])]
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def check() -> int:
    """Print the installed versions of :data:`LOWEST`; 1 unless each is its lower bound."""
    status = 0
    for name, bound in pins().items():
        installed = metadata.version(name)
        same = _release(installed) == _release(bound)
        print(f"{name:12} {installed:10} (lowest allowed: {bound})" + ("" if same else "  <--"))
        status |= not same
    if status:
        print("lowest.py: not the lowest allowed versions (marked <--)", file=sys.stderr)
    return status


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        return check()
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    print("\n".join(requirements()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
