"""Is a process still there? Identities that survive pid reuse, for runs and job folders.

A pid alone is not an identity: after its process dies the number is handed out again. On
Linux ``identity(pid)`` adds the process's start time (clock ticks since boot, from
``/proc/PID/stat``), so ``alive(identity)`` is false for a new process that got the old number.
``HOST`` and ``boot_id()`` say where and in which boot of that machine the identity was taken:
an identity from another boot of this host is dead, one from another host cannot be checked.
"""

from __future__ import annotations

import os
import socket

HOST = socket.gethostname()


def _pid_namespace() -> str:
    """This process's PID namespace (its inode; '' where the kernel does not say). Containers
    sharing a host name (docker --network host, Kubernetes hostNetwork) each number their
    processes in their own: a pid from another namespace means nothing here."""
    try:
        return os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]")
    except OSError:
        return ""


NAMESPACE = _pid_namespace()


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def identity(pid: int) -> str:
    """``PID:START:NAMESPACE`` (START and NAMESPACE empty where /proc is not there) of a
    process in this PID namespace."""
    fields = _stat(pid)
    return f"{pid}:{fields[19] if fields else ''}:{NAMESPACE}"


def checkable(ident: str) -> bool:
    """Whether :func:`alive` can tell for ``ident``: it was taken in this PID namespace (or
    says none, as identities written before namespaces were recorded)."""
    namespace = ident.split(":")[2] if ident.count(":") >= 2 else ""
    return not namespace or namespace == NAMESPACE


def alive(ident: str) -> bool:
    """True while the process ``ident`` names runs (a zombie counts as dead); True too for a
    process of another PID namespace, which cannot be checked from here."""
    if not checkable(ident):
        return True
    pid_text, _, rest = ident.partition(":")
    start = rest.partition(":")[0]
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if not os.path.isdir("/proc/self"):  # no procfs: the pid is all there is
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return not start or fields[19] == start


def boot_id() -> str:
    """This boot of this machine ('' where the kernel does not say)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""
