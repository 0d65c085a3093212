"""What an administrator deploys: the wheel, the systemd unit, the logrotate file.

The wheel is built the way ``make dist`` builds it (``python -m build``,
the wheel from the sdist) from a copy of the work tree, so that the build
never writes into the tree other tests import from, and installed with its
dependencies into a fresh virtualenv from the index pip uses here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "conf" / "sosimple-proxy.service"
LOGROTATE = ROOT / "conf" / "sosimple-proxy.logrotate"
INSTALL_DIR = "/opt/sosimple-proxy"
SITE_INI = "/etc/sosimple-proxy/site.ini"


def _tracked_files() -> list[str]:
    """The work tree's files as git sees them (tracked, or new and not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


@pytest.fixture(scope="session")
def dist(tmp_path_factory) -> Path:
    """dist/ with the sdist and the wheel, built once per session."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to copy the work tree")
    try:
        import build  # noqa: F401
    except ImportError:
        pytest.skip("the 'build' package is not installed (make install-test installs it)")
    base = tmp_path_factory.mktemp("dist")
    tree = base / "tree"
    for name in _tracked_files():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    out = base / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(tree)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("sosimple_proxy-*.whl")
    return wheel


def test_dist_has_a_wheel_and_an_sdist_with_the_deployment_files(dist):
    import tarfile

    (sdist,) = dist.glob("sosimple_proxy-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"conf/site.ini", "conf/sosimple-proxy.service", "conf/sosimple-proxy.logrotate", "README.md"} <= names
    assert _wheel(dist).exists()


def test_the_wheel_holds_the_plugin_and_every_package_file(dist):
    with zipfile.ZipFile(_wheel(dist)) as z:
        names = set(z.namelist())
    assert "twisted/plugins/sosimple_proxy_plugin.py" in names
    # never Twisted's own package marker, never a stale plugin cache
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert not any(n.endswith("dropin.cache") for n in names)
    # non-Python files the package reads at run time (package data) ship too
    package_files = [f for f in _tracked_files() if f.startswith("sosimple_proxy/") and not f.endswith(".pyc")]
    missing = [f for f in package_files if f not in names]
    assert not missing, f"not in the wheel: {missing}"


@pytest.mark.timeout(600)
def test_the_wheel_installed_in_a_fresh_venv_runs_twistd_and_sosimple(dist, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_ = venv / "bin"
    # with its dependencies, from the index pip uses here (pip's cache makes a rerun fast)
    result = subprocess.run(
        [str(bin_ / "pip"), "install", "-q", str(_wheel(dist))], capture_output=True, text=True, timeout=480
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # from /, so that nothing of the work tree is on the path
    run = dict(cwd="/", capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": ""})
    twistd = subprocess.run([str(bin_ / "twistd"), "--help"], **run)
    assert twistd.returncode == 0 and "sosimple-proxy" in twistd.stdout, twistd.stdout + twistd.stderr
    sosimple = subprocess.run([str(bin_ / "sosimple"), "--help"], **run)
    assert sosimple.returncode == 0 and "check" in sosimple.stdout, sosimple.stderr
    check = subprocess.run([str(bin_ / "twistd"), "sosimple-proxy", "-c", str(ROOT / "conf" / "site.ini"), "--check"], **run)
    assert check.returncode == 0, check.stderr
    check = subprocess.run([str(bin_ / "sosimple"), "check", str(ROOT / "conf" / "site.ini")], **run)
    assert check.returncode == 0, check.stderr


# --- the systemd unit


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> values of a unit file (keys may repeat; comments dropped)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_runs_the_plugin_on_the_readme_config_as_its_own_user():
    s = unit_settings(UNIT.read_text())
    (exec_start,) = s["ExecStart"]
    words = exec_start.split()
    assert words[0] == f"{INSTALL_DIR}/bin/twistd"
    assert "--nodaemon" in words and "--pidfile=" in words
    assert words[words.index("sosimple-proxy") + 1 :] == ["-c", SITE_INI]
    assert s["User"] == ["sosimple"] and s["ProtectSystem"] == ["strict"]
    assert s["StateDirectory"] == ["sosimple-proxy"] and s["WorkingDirectory"] == ["/var/lib/sosimple-proxy"]
    assert s["Restart"] == ["on-failure"] and s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    readme = (ROOT / "README.md").read_text()
    deploying = readme[readme.index("## Deploying") :]
    for words in (INSTALL_DIR, SITE_INI, "useradd", "systemctl enable --now sosimple-proxy", "sosimple check", "make dist"):
        assert words in deploying, words


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify checks that ExecStart's program exists: point it at this venv's twistd
    twistd = Path(sys.executable).parent / "twistd"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(f"{INSTALL_DIR}/bin/twistd", str(twistd)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


# --- logrotate


def test_logrotate_copytruncate_keeps_an_append_only_writer_at_the_start(tmp_path):
    logrotate = shutil.which("logrotate") or ("/usr/sbin/logrotate" if os.path.exists("/usr/sbin/logrotate") else None)
    if logrotate is None:
        pytest.skip("logrotate is not installed (Debian package logrotate)")
    import grp
    import pwd

    text = LOGROTATE.read_text()
    assert re.search(r"^\s*copytruncate\s*$", text, re.M)
    me, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text.replace("/var/log/sosimple-proxy/", f"{tmp_path}/").replace("su sosimple sosimple", f"su {me} {group}"))
    log = tmp_path / "sosimple-proxy.log"
    # as systemd's StandardOutput=append: opens it for twistd
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(fd, b"before rotation\n")
        result = subprocess.run(
            [logrotate, "--force", "--state", str(tmp_path / "state"), str(conf)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        os.write(fd, b"after rotation\n")
    finally:
        os.close(fd)
    assert (tmp_path / "sosimple-proxy.log.1").read_bytes() == b"before rotation\n"  # delaycompress
    assert log.read_bytes() == b"after rotation\n"
