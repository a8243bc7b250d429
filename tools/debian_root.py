# SPDX-License-Identifier: GPL-3.0-or-later
"""Debian roots of newer Orthanc and CPython releases, and the checkout's tests run inside them.

The machine's own Debian is one row of the supported platforms; the others
are Debian releases whose packages bring another Orthanc, official plugin
and CPython (the README's table of platforms). For each, this tool:

- ``build``: makes a minimal root with ``debootstrap`` from the mirror the
  machine's own apt uses, then installs Orthanc and the packages the tests
  need. A root is made again when it is missing or was made for another
  package list (its stamp file says which);
- ``test``: copies the checkout's tracked files into the root, installs the
  package there into a venv of the root's Python, and runs pytest inside
  (``chroot``, in a mount namespace of its own: ``/proc`` and ``/dev/shm``
  are mounted for that run only and vanish with it, whatever happens).

Usage: ``python3 tools/debian_root.py {build,test} NAME... [--dir .roots] [-- PYTEST ARGUMENTS]``
(as root: debootstrap and chroot need it); several roots run at once.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Debian's names of the rows; each is built with debootstrap's script for sid,
# which knows every current suite (Debian 12's debootstrap has none for forky).
RELEASES = {"trixie": "Debian 13", "forky": "Debian testing"}
DEBOOTSTRAP_SCRIPT = "/usr/share/debootstrap/scripts/sid"

# What a root holds besides the minimal base: Orthanc and its SDK header, the
# official plugin to compare with, a C compiler and the Python headers to
# build the loader, DCMTK as a DICOM peer, PostgreSQL and nginx for clusters.
PACKAGES = (
    "ca-certificates", "orthanc", "orthanc-dev", "orthanc-python", "python3-dev", "python3-venv",
    "python3-pydicom", "python3-pil", "gcc", "libc6-dev", "cmake", "dcmtk", "postgresql",
    "orthanc-postgresql", "nginx-light", "procps",
)

# The host's CA bundle: pip in the root needs the same trust as the host's,
# copied in after apt (the root's ca-certificates package writes its own).
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# apt in testing: the registry's Release file may be past its Valid-Until.
APT = ["apt-get", "-o", "Acquire::Check-Valid-Until=false", "-o", "Dpkg::Use-Pty=0"]


class RootError(RuntimeError):
    """A root could not be made or used; the message says what to do."""


def host_mirror() -> str:
    """The Debian mirror the machine's own apt uses (its first source that is not a security one)."""
    candidates: list[str] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.+)$", stanza, re.M))
            if fields.get("Types", "deb").split()[0] == "deb" and "security" not in fields.get("Suites", ""):
                candidates += fields.get("URIs", "").split()
    sources_list = Path("/etc/apt/sources.list")
    if sources_list.exists():
        for line in sources_list.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[2]:
                candidates.append(parts[1] if not parts[1].startswith("[") else parts[2])
    for uri in candidates:
        if "debian" in uri and "security" not in uri:
            return uri
    raise RootError("no Debian mirror in /etc/apt/sources.list(.d): the roots are made from the host's mirror")


def stamp_of(root: Path) -> Path:
    return root.parent / f"{root.name}.packages"


def wanted_stamp(name: str) -> str:
    return f"{name}\n" + "\n".join(PACKAGES) + "\n"


def run(command: list[str], **kwargs: object) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def in_root(root: Path, script: str, env: dict[str, str] | None = None) -> None:
    """Runs ``script`` (sh) in ``root``, with /proc and /dev/shm mounted in a mount namespace of its own."""
    mounts = (
        f"mount -t proc proc {root}/proc && mkdir -p {root}/dev/shm && "
        f"mount -t tmpfs -o mode=1777 tmpfs {root}/dev/shm && "
    )
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               mounts + f'exec chroot {root} /bin/sh -c "$0"', script]
    run(command, env=env if env is not None else root_environment())


def root_environment() -> dict[str, str]:
    """A clean environment for the root, with the host's pip and proxy settings and CI's flag."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "TCP_NODELAY": "1"}
    for key, value in os.environ.items():
        if key.startswith("PIP_") or key.lower().endswith("_proxy") or key in ("CI", "TERM"):
            env[key] = value
    env.pop("PIP_FIND_LINKS", None)  # the host's local folders do not exist in the root
    return env


def build(name: str, folder: Path) -> Path:
    """Makes the root ``folder/name`` unless it exists for the same package list; returns its path."""
    if name not in RELEASES:
        raise RootError(f"unknown root {name!r}: choose one of {', '.join(RELEASES)}")
    root = (folder / name).resolve()
    stamp = stamp_of(root)
    if root.exists() and stamp.exists() and stamp.read_text() == wanted_stamp(name):
        print(f"{name}: {root} is up to date", flush=True)
        return root
    if shutil.which("debootstrap") is None:
        raise RootError("debootstrap is not installed: apt-get install debootstrap")
    if root.exists():
        shutil.rmtree(root)
    stamp.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    run(["debootstrap", "--variant=minbase", name, str(root), host_mirror(), DEBOOTSTRAP_SCRIPT],
        stdout=subprocess.DEVNULL)
    packages = " ".join(PACKAGES)
    # policy-rc.d: the packages' services (orthanc, postgresql, nginx) are not started in the root.
    (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
    (root / "usr/sbin/policy-rc.d").chmod(0o755)
    apt = " ".join(APT)
    in_root(root, f"{apt} update -q && {apt} install -y -q --no-install-recommends {packages}")
    shutil.copyfile(CA_BUNDLE, root / CA_BUNDLE.lstrip("/"))
    stamp.write_text(wanted_stamp(name))
    return root


def copy_checkout(root: Path) -> None:
    """The checkout's tracked files, as they are in the work tree, into ``root/src``."""
    source = root / "src"
    if source.exists():
        shutil.rmtree(source)
    source.mkdir()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for name in files.decode().split("\0"):
        if name and (REPO / name).is_file():
            target = source / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target)


def test(name: str, folder: Path, pytest_args: list[str]) -> None:
    """Installs the checkout in the root ``folder/name`` and runs pytest there with ``pytest_args``."""
    root = build(name, folder)
    copy_checkout(root)
    arguments = " ".join(shlex.quote(argument) for argument in pytest_args)
    in_root(root, (
        "set -e; cd /src; "
        "[ -x /venv/bin/python ] || python3 -m venv /venv; "
        "/venv/bin/python -m pip install --quiet --upgrade pip; "
        "/venv/bin/python -m pip install --quiet '.[test]'; "
        "/venv/bin/orthanc-py doctor; "
        f"/venv/bin/python -m pytest -p no:cacheprovider {arguments}"
    ))


def run_one(action: str, name: str, folder: Path, pytest_args: list[str]) -> int:
    """``build`` or ``test`` one root; returns an exit status."""
    try:
        if action == "build":
            build(name, folder)
        else:
            test(name, folder, pytest_args)
    except RootError as error:
        print(f"debian_root.py: {name}: {error}", file=sys.stderr, flush=True)
        return 2
    except subprocess.CalledProcessError as error:
        return error.returncode or 1
    return 0


def run_concurrently(action: str, names: list[str], folder: Path, pytest_args: list[str]) -> int:
    """Each root in a process of its own, at once (their suites mostly wait on Orthanc, not on the CPU).

    Each one's output goes to ``folder/NAME.log`` and is printed whole when it ends.
    """
    folder.mkdir(parents=True, exist_ok=True)
    children = {}
    for name in names:
        log = open(folder / f"{name}.log", "w")  # noqa: SIM115  (closed below, once the child ends)
        command = [sys.executable, __file__, action, name, "--dir", str(folder), "--", *pytest_args]
        children[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log)
        print(f"== {name}: {action} started (output: {folder / f'{name}.log'})", flush=True)
    status = 0
    for name, (child, log) in children.items():
        code = child.wait()
        log.close()
        print(f"== {name}: exit status {code}\n{(folder / f'{name}.log').read_text()}", flush=True)
        status = status or code
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("action", choices=["build", "test"])
    parser.add_argument("names", nargs="+", metavar="name",
                        help=f"the roots: {', '.join(f'{k} ({v})' for k, v in RELEASES.items())}; several run at once")
    parser.add_argument("--dir", type=Path, default=REPO / ".roots", help="where roots are kept (default .roots)")
    parser.epilog = "After --, pytest's arguments (test)."
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    options = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    options.pytest_args = pytest_args
    if os.geteuid() != 0:
        print("debian_root.py: debootstrap and chroot need root: run it with sudo", file=sys.stderr)
        return 2
    unknown = [name for name in options.names if name not in RELEASES]
    if unknown:
        print(f"debian_root.py: unknown root(s) {', '.join(unknown)}: choose among {', '.join(RELEASES)}",
              file=sys.stderr)
        return 2
    if len(options.names) == 1:
        return run_one(options.action, options.names[0], options.dir, options.pytest_args)
    return run_concurrently(options.action, options.names, options.dir.resolve(), options.pytest_args)


if __name__ == "__main__":
    sys.exit(main())
