"""What a real node changes on the host, recorded before it starts and undone
when it stops (or, after a crash, when the next one starts).

The kubelet, the CNI bridge plugin and kube-proxy change kernel settings
(kubelet: ``kernel.panic`` 1->10, ``kernel.panic_on_oops`` 0->1,
``vm.overcommit_memory`` 0->1, ...; bridge: ``net.ipv4.ip_forward``;
kube-proxy: ``net.ipv4.conf.all.route_localnet`` and conntrack settings) and
leave iptables chains, a bridge, mounts and cgroups behind. Every function
here is idempotent: it can run on a clean host, twice, or after a crash.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

# Everything the stack is known to write (kubelet: setupKernelTunables in
# pkg/kubelet/cm/container_manager_linux.go; kube-proxy: pkg/proxy/conntrack
# and route_localnet in pkg/proxy/iptables; CNI bridge: ip_forward).
SYSCTLS = (
    "kernel.panic",
    "kernel.panic_on_oops",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
    "net.netfilter.nf_conntrack_udp_timeout",
    "net.netfilter.nf_conntrack_udp_timeout_stream",
)
PROC_SYS = Path("/proc/sys")
CHAIN_PREFIXES = ("KUBE-", "CNI-")
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")


# ---- sysctls --------------------------------------------------------------
def sysctl_path(name: str, root: Path = PROC_SYS) -> Path:
    return root / name.replace(".", "/")


def record_sysctls(names: tuple[str, ...] = SYSCTLS, root: Path = PROC_SYS) -> dict[str, str | None]:
    """Current values; ``None`` where the setting does not exist (yet): a
    conntrack setting appears only once the module is loaded."""
    values: dict[str, str | None] = {}
    for name in names:
        try:
            values[name] = sysctl_path(name, root).read_text().strip()
        except (FileNotFoundError, PermissionError):
            values[name] = None
    return values


def restore_sysctls(recorded: dict[str, str | None], root: Path = PROC_SYS) -> dict[str, str]:
    """Write back every recorded value that differs now; returns what changed
    (name -> the value put back). Settings that did not exist are left alone."""
    restored = {}
    for name, value in recorded.items():
        if value is None:
            continue
        path = sysctl_path(name, root)
        try:
            current = path.read_text().strip()
        except FileNotFoundError:
            continue
        if current != value:
            path.write_text(value + "\n")
            restored[name] = value
    return restored


# ---- the state file ---------------------------------------------------------
def read_state(path: Path) -> dict | None:
    """The state a previous start recorded, or None. A file that is not JSON
    (a crash while writing it) still means a run happened: {} then."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def write_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


# ---- processes -----------------------------------------------------------------
def process_exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def ours(pid: int, exe: str) -> bool:
    """The pid still runs ``exe`` (a recorded pid may have been reused)."""
    return process_exe(pid) in (exe, exe + " (deleted)")


def stop_process(pid: int, exe: str, grace: float = 10.0) -> None:
    """SIGTERM the process group (then SIGKILL after ``grace``), only if the
    pid still runs ``exe``."""
    if not ours(pid, exe):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:  # reap it when it is our child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not process_alive(pid):
                return
            time.sleep(0.1)


def pids_running(exe_path: str) -> list[int]:
    """Live pids whose executable is exactly ``exe_path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            exe = process_exe(int(entry.name))
            if exe in (exe_path, exe_path + " (deleted)") and process_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---- cgroups ---------------------------------------------------------------------
def cgroup_mounts(mountinfo: str | None = None) -> list[Path]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    points = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split()[0] if right else ""
        if fstype in ("cgroup", "cgroup2"):
            points.append(Path(left.split()[4]))
    return points


def kubepods_cgroups(mounts: list[Path]) -> list[Path]:
    """Every cgroup directory named kubepods* (and below), deepest first."""
    found = []
    for mount in mounts:
        for top in mount.glob("kubepods*"):
            if top.is_dir():
                found += [Path(root) for root, _, _ in os.walk(top)]
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def remove_kubepods_cgroups(mounts: list[Path] | None = None, timeout: float = 15.0) -> list[Path]:
    """Kill whatever still runs in a kubepods cgroup, then rmdir leaf first.
    Returns the cgroups that could not be removed."""
    mounts = cgroup_mounts() if mounts is None else mounts
    deadline = time.monotonic() + timeout
    left = kubepods_cgroups(mounts)
    while left:
        for group in left:
            procs = group / "cgroup.procs"
            try:
                kill_pids([int(p) for p in procs.read_text().split()])
            except (FileNotFoundError, ValueError, OSError):
                pass
        for group in left:
            try:
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                pass
        left = kubepods_cgroups(mounts)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return left


# ---- mounts --------------------------------------------------------------------------
def mounts_under(prefixes: tuple[str, ...], mountinfo: str | None = None) -> list[str]:
    """Mount points at or below any prefix, deepest first (unmount order)."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    points = []
    for line in text.splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def unmount_under(prefixes: tuple[str, ...]) -> list[str]:
    """Lazily unmount everything below the prefixes; returns what is left."""
    for _ in range(3):
        points = mounts_under(prefixes)
        if not points:
            return []
        for point in points:
            subprocess.run(["umount", "-l", point], capture_output=True)
    return mounts_under(prefixes)


# ---- network ---------------------------------------------------------------------------
def delete_link(name: str) -> None:
    if Path(f"/sys/class/net/{name}").exists():
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def chain_cleanup_commands(save_output: str, table: str, prefixes: tuple[str, ...] = CHAIN_PREFIXES) -> list[list[str]]:
    """iptables arguments that remove the chains with these prefixes from an
    ``iptables-save -t TABLE`` dump: first the jumps into them from other
    chains, then flush, then delete."""
    chains = [line[1:].split()[0] for line in save_output.splitlines()
              if line.startswith(":") and line[1:].startswith(prefixes)]
    if not chains:
        return []
    commands = []
    for line in save_output.splitlines():
        if not line.startswith("-A "):
            continue
        parts = line.split()
        owner = parts[1]
        target = re.search(r"\s-[jg]\s+(\S+)", line)
        if not owner.startswith(prefixes) and target and target.group(1) in chains:
            commands.append(["-t", table, "-D", *_iptables_split(line[3:])])
    commands += [["-t", table, "-F", c] for c in chains]
    commands += [["-t", table, "-X", c] for c in chains]
    return commands


def _iptables_split(rule: str) -> list[str]:
    import shlex

    return shlex.split(rule)


def remove_chains(prefixes: tuple[str, ...] = CHAIN_PREFIXES) -> list[str]:
    """Remove KUBE-* and CNI-* chains in every table, for IPv4 and IPv6;
    returns the chains still present afterwards."""
    for tool in ("iptables", "ip6tables"):
        for table in IPTABLES_TABLES:
            dump = subprocess.run([f"{tool}-save", "-t", table], capture_output=True, text=True)
            if dump.returncode != 0:
                continue
            for args in chain_cleanup_commands(dump.stdout, table, prefixes):
                subprocess.run([tool, "-w", *args], capture_output=True)
    return leftover_chains(prefixes)


def leftover_chains(prefixes: tuple[str, ...] = CHAIN_PREFIXES) -> list[str]:
    left = []
    for tool in ("iptables", "ip6tables"):
        for table in IPTABLES_TABLES:
            dump = subprocess.run([f"{tool}-save", "-t", table], capture_output=True, text=True)
            left += [f"{tool}/{table}/{line[1:].split()[0]}" for line in dump.stdout.splitlines()
                     if line.startswith(":") and line[1:].startswith(prefixes)]
    return left
