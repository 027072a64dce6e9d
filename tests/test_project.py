"""The project's own promises: the quickstart that CI runs, and the dependency lists."""

from __future__ import annotations

import re
import tomllib

from conftest import REPO


def quickstart_commands():
    text = (REPO / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, re.S)


def test_readme_quickstart_has_two_commands_and_ci_runs_the_second():
    commands = quickstart_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert "daskinfer demo" in commands[0] and "pytest" in commands[1]
    assert commands[1] in (REPO / ".ci" / "run").read_text()


def _names(requirements):
    """Package names, counting the extras we use (dask[distributed], s3fs[boto3]) as the packages they add."""
    names = set()
    for requirement in requirements:
        match = re.match(r"([\w.-]+)(?:\[([\w,.-]+)\])?", requirement)
        names.add(match.group(1).lower())
        names.update(extra.lower() for extra in (match.group(2) or "").split(",") if extra)
    return names


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"])
    listed = set()
    for line in (REPO / "environment.yml").read_text().splitlines():
        match = re.match(r"^\s*-\s+([A-Za-z][\w.-]*)", line)
        if match and match.group(1) not in ("python", "pip", "conda-forge"):
            listed.add(match.group(1).lower())
    assert listed == wanted
