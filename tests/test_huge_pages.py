"""The commands' restart with glibc's huge-page tunable (ecformer_jax/huge_pages.py)."""
import subprocess
import sys

import pytest

from ecformer_jax import huge_pages


@pytest.fixture
def thp(tmp_path):
    def write(text):
        path = tmp_path / "enabled"
        path.write_text(text)
        return str(path)
    return write


@pytest.fixture
def glibc(monkeypatch):
    monkeypatch.setattr(huge_pages.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(huge_pages.sys, "platform", "linux")


def test_environment_adds_the_tunable_only_where_it_helps(thp, glibc, monkeypatch):
    madvise = thp("always [madvise] never\n")
    env = huge_pages.environment({"PATH": "/bin"}, madvise)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    kept = huge_pages.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, madvise)
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert huge_pages.environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, madvise) is None  # the user's choice
    assert huge_pages.environment({"ECFORMER_HUGE_PAGES": "0"}, madvise) is None
    assert huge_pages.environment({}, thp("[always] madvise never\n")) is None
    assert huge_pages.environment({}, thp("always madvise [never]\n")) is None
    assert huge_pages.environment({}, str(thp("") + ".missing")) is None
    monkeypatch.setattr(huge_pages.platform, "libc_ver", lambda: ("glibc", "2.34"))
    assert huge_pages.environment({}, madvise) is None
    monkeypatch.setattr(huge_pages.platform, "libc_ver", lambda: ("", ""))
    assert huge_pages.environment({}, madvise) is None


def test_restart_reexecutes_the_command_line_once(thp, tmp_path):
    """A real re-execution: the same `python -c` runs twice, the second time with the tunable, and stops there."""
    log = tmp_path / "runs.txt"
    code = (f"import os, sys; from ecformer_jax import huge_pages as h; h.THP_MODE = {thp('[madvise]')!r}; "
            f"open({str(log)!r}, 'a').write(os.environ.get('GLIBC_TUNABLES', '-') + '\\n'); "
            "h.restart_with_huge_pages(); print('args', sys.argv[1:])")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("GLIBC_TUNABLES", "ECFORMER_HUGE_PAGES")}
    out = subprocess.run([sys.executable, "-c", code, "x", "--y=1"], env=env, capture_output=True, text=True,
                         check=True).stdout
    runs = log.read_text().splitlines()
    if huge_pages.environment(env, thp("[madvise]")) is None:  # not glibc >= 2.35 on Linux: nothing to do
        assert runs == ["-"]
    else:
        assert runs == ["-", "glibc.malloc.hugetlb=1"]
    assert out == "args ['x', '--y=1']\n"
