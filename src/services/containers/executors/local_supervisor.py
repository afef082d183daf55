"""The local executor's supervisors: one per job, each forked from a small, long-lived fork
server, so a job costs a fork instead of a Python start (~30 ms of CPU each).

A job's supervisor runs the job's command and, when the command ends or the executor stops
it (SIGTERM), kills every process the command started -- those that left its process group
or session too (`setsid cmd &`, double forks, daemons). It makes itself a child subreaper
(prctl PR_SET_CHILD_SUBREAPER, Linux 3.4+), so orphaned descendants are re-parented to it
instead of to init; it finds them as its own children and kills them until none is left.

The fork server is started once per service process as

    python -I -S local_supervisor.py CONTROL_FD

and imports nothing of the service (-I: no PYTHON* variables, -S: no site packages). On
its control socket (SOCK_SEQPACKET) each message carries three descriptors: the job's
stdout and stderr files and the job's channel, a stream socket. It forks a supervisor per
message and reaps them; it exits when the control socket closes (its service is gone),
leaving running supervisors to finish their jobs. On the channel the supervisor reads one
line of JSON (`argv`, `env`, `cwd`, `address_space`, `cpu_seconds`, `pid_file`,
`exit_file`), writes its pid to `pid_file` and answers it, and when it is done answers
`EXIT_CODE MAX_RSS_KIB` (the exit code is 128 + N when signal N killed the command). The
exit code goes to `exit_file` too when the command ended by itself (a stopped job leaves
none), for a service that restarted meanwhile. Each supervisor has its own session, so a
restarting service neither takes its job down nor loses the process that cleans up after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import socket
import sys
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: The exit status when the executor stopped the job (a SIGKILL, as for a killed group).
STOPPED = 128 + signal.SIGKILL
#: Signals Python ignores for itself that a command must get with their default action
#: (an ignored SIGPIPE would turn `yes | head -1` into "Broken pipe" errors).
RESTORED = (signal.SIGPIPE, signal.SIGXFSZ)


class _Stop(Exception):
    """Raised out of the wait by a stop signal."""


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


#: Loaded once in the fork server: every supervisor forked from it shares the handle.
LIBC = _libc()


def become_subreaper() -> bool:
    try:
        return LIBC is not None and bool(LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except AttributeError:  # not Linux: the process group is all we can kill
        return False


def children() -> list[int]:
    """Pids whose parent is this process (zombies included)."""
    me = os.getpid()
    try:  # the kernel's own list (CONFIG_PROC_CHILDREN): no scan of every process
        with open(f"/proc/{me}/task/{me}/children", "rb") as listed:
            return [int(pid) for pid in listed.read().split()]
    except OSError:
        pass
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) == me:
            found.append(int(entry))
    return found


def _kill(pid: int, number: int, group: bool = False) -> None:
    with contextlib.suppress(OSError):  # already gone
        (os.killpg if group else os.kill)(pid, number)


def kill_everything(leader: int) -> None:
    """Kill the command's group, then every child until none is left (orphaned grandchildren
    become children as their parents die)."""
    _kill(leader, signal.SIGKILL, group=True)
    while True:
        for pid in children():
            _kill(pid, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def start(request: dict[str, Any]) -> int:
    """Spawn the command in its own session and group, with the job's environment and
    limits. posix_spawn (a vfork, no copy of this process) cannot set limits, so they are
    set on this supervisor first and inherited: it has them for the rest of its short life,
    within which it needs little CPU time and far less memory than the limit's headroom."""
    address_space = int(request["address_space"])
    if address_space:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    cpu_seconds = int(request["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    argv = [str(arg) for arg in request["argv"]]
    env = {str(key): str(value) for key, value in request["env"].items()}
    return os.posix_spawn(
        argv[0], argv, env, setsid=True, setsigdef=(*STOP_SIGNALS, *RESTORED), setsigmask=()
    )


def _stop(number: int, frame: object) -> None:
    raise _Stop


def supervise(request: dict[str, Any]) -> tuple[int, int]:
    """Run the command to its end (or a stop signal), kill what it left; its exit code and
    peak memory (KiB)."""
    become_subreaper()
    for number in STOP_SIGNALS:
        signal.signal(number, _stop)
    # Held back until the wait below, so a stop cannot land between the fork and the try.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    leader = start(request)
    max_rss = 0
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        _, status, usage = os.wait4(leader, 0)
        code, max_rss = _exit_code(status), usage.ru_maxrss
        _write(request["exit_file"], code)
    except _Stop:
        code = STOPPED
    for number in STOP_SIGNALS:  # nothing may interrupt the clean-up
        signal.signal(number, signal.SIG_IGN)
    kill_everything(leader)
    return code, max_rss


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _write(path: str, number: int) -> None:
    with open(path, "w") as out:
        out.write(str(number))


def _job(channel: socket.socket, stdout: int, stderr: int) -> int:
    """A job's supervisor, in the forked child: set up its descriptors, report its pid, run
    the command and report how it ended."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    for source, target in ((null, 0), (stdout, 1), (stderr, 2)):
        os.dup2(source, target)
        os.close(source)
    with channel.makefile("rb") as incoming:
        request = json.loads(incoming.readline())
    os.chdir(str(request["cwd"]))
    _write(request["pid_file"], os.getpid())
    channel.sendall(f"{os.getpid()}\n".encode())
    code, max_rss = supervise(request)
    with contextlib.suppress(OSError):  # the service restarted: the exit file tells the next
        channel.sendall(f"{code} {max_rss}\n".encode())
    return code


def _reap(number: int, frame: object) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return


def serve(control: socket.socket) -> None:
    """Fork a supervisor for every message until the control socket closes."""
    signal.signal(signal.SIGCHLD, _reap)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 16, 3)
        except InterruptedError:
            continue
        if not message:
            return
        if len(fds) != 3:  # a malformed message: nothing to run, nowhere to answer
            for fd in fds:
                os.close(fd)
            continue
        stdout, stderr, channel_fd = fds
        if os.fork() == 0:
            control.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = 127
            try:
                code = _job(socket.socket(fileno=channel_fd), stdout, stderr)
            except BaseException as exc:  # the job's stderr says why it never ran
                os.write(2, f"bulkjobs supervisor: {exc!r}\n".encode())
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
