"""The test command's distribution keeps a module on one worker, so its module-scoped fixtures (node processes,
trained checkpoints) are built once.

`make test` used `--dist loadgroup` with `xdist_group` marks until pytest 9.2 silently stopped the grouping
(pytest-dev/pytest-xdist#1386: the group travels as a node-id suffix that pytest 9.2 no longer takes), and every
node module then started its node on both workers. This runs the Makefile's own pytest options on a throw-away
suite of two modules and checks where their tests ran.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)

MODULE = '''
import os
import pytest

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    with open(os.environ["SETUP_LOG"], "a") as f:
        f.write(f"setup {__name__}\\n")

@pytest.mark.parametrize("i", range(6))
def test_case(built, i):
    with open(os.environ["SETUP_LOG"], "a") as f:
        f.write(f"run {__name__} {os.environ.get('PYTEST_XDIST_WORKER')}\\n")
'''


def make_test_options() -> list[str]:
    """The pytest options of the Makefile's ``test`` target (between ``pytest`` and the test path)."""
    recipe = (REPO / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    line = next(x for x in recipe.splitlines() if "-m pytest" in x)
    opts = shlex.split(line.split("-m pytest", 1)[1])
    assert opts[-1] == "test", f"the test target should end with the test folder: {line!r}"
    return opts[:-1]


def test_the_test_command_runs_each_module_on_one_worker_with_its_fixture_built_once(tmp_path):
    opts = make_test_options()
    assert "-n" in opts, f"make test should run pytest-xdist workers: {opts}"
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")
    for name in ("test_first", "test_second"):
        (suite / f"{name}.py").write_text(MODULE)
    log = tmp_path / "log.txt"
    res = subprocess.run([sys.executable, "-m", "pytest", *opts, "-p", "no:cacheprovider", str(suite)],
                         cwd=suite, env={**os.environ, "SETUP_LOG": str(log)},
                         capture_output=True, text=True, timeout=100)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    lines = log.read_text().splitlines()
    for name in ("test_first", "test_second"):
        assert lines.count(f"setup {name}") == 1, f"{name}'s module fixture was built more than once: {lines}"
        workers = {x.split()[2] for x in lines if x.startswith(f"run {name} ")}
        assert len(workers) == 1, f"{name} ran on several workers {workers}"
    assert sum(x.startswith("run ") for x in lines) == 12
