"""Nodes of a test cluster on one machine, made of Linux namespaces.

Each node is a network namespace (`ip netns add`) with a veth pair onto a bridge in
this machine's own namespace, an address in a private /24 that nothing else here uses,
and a UTS namespace with its own host name. A process started with `Network.enter(node)`
in front of its command line runs "on" that node: it sees only the node's interfaces and
host name, so two nodes reach each other over the bridge by TCP, as hosts do over a
switch. The file system is shared, as on a cluster with a shared home directory.

What the network does to a node, for the failure tests: kill every process in it, take
its link down and up, slow its link.

Everything made is recorded in `<root>/made.json` as it is made, and a reaper process
(reaper.py, in a session of its own) holds a pipe from this process: when the pipe
closes, because `close()` ran or because this process died (even by SIGKILL), the
reaper kills what runs in the nodes and removes the namespaces, links and files."""
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REAPER = Path(__file__).resolve().parent / "reaper.py"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"


def prerequisites():
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "the namespace cluster needs root (ip netns add, veth pairs, a bridge)"
    for program in ("ip", "tc", "nsenter", "unshare"):
        if not shutil.which(program, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])):
            return f"{program} is not installed (Debian: iproute2, util-linux)"
    return None


def ip(*arguments, check=True):
    result = subprocess.run(["ip", *map(str, arguments)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(map(str, arguments))} failed: {result.stderr.strip()}")
    return result


def free_subnet():
    """A 10.231.x.0/24 that no interface or route of this machine touches."""
    used = ip("-o", "addr").stdout + ip("route").stdout + ip("-o", "link").stdout
    for index in range(os.getpid() % 200, os.getpid() % 200 + 200):
        subnet = ipaddress.ip_network(f"10.231.{index % 250 + 1}.0/24")
        if f"10.231.{index % 250 + 1}." not in used:
            return subnet
    raise RuntimeError("no free 10.231.x.0/24 subnet for the test cluster")


class Network:
    def __init__(self, root, nodes, tag=None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.nodes = [f"node{i + 1}" for i in range(nodes)]
        # Names must be unique on this machine (namespaces and links are global to it)
        # and interface names at most 15 characters.
        self.tag = tag or f"ft{os.getpid() % 100000}"
        self.subnet = free_subnet()
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])  # the bridge, in this machine's own namespace
        self.address = {node: str(hosts[i + 1]) for i, node in enumerate(self.nodes)}
        self.bridge = f"{self.tag}br"
        self.made = {"netns": [], "links": [], "uts": [], "pids": []}
        self.reaper = None

    # -- making ------------------------------------------------------------------------------------
    def record(self, kind, value):
        self.made[kind].append(value)
        (self.root / "made.json").write_text(json.dumps(self.made))

    def netns(self, node):
        return f"{self.tag}-{node}"

    def uts_file(self, node):
        return self.root / "uts" / node

    def veth(self, node):
        return f"{self.tag}v{self.nodes.index(node) + 1}"

    def start(self):
        (self.root / "uts").mkdir(exist_ok=True)
        (self.root / "made.json").write_text(json.dumps(self.made))
        self.reaper = subprocess.Popen([sys.executable, REAPER, self.root / "made.json"], stdin=subprocess.PIPE,
                                       start_new_session=True)
        ip("link", "add", self.bridge, "type", "bridge")
        self.record("links", self.bridge)
        ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for node in self.nodes:
            ns = self.netns(node)
            ip("netns", "add", ns)
            self.record("netns", ns)
            ip("link", "add", self.veth(node), "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.record("links", self.veth(node))
            ip("link", "set", self.veth(node), "master", self.bridge)
            ip("link", "set", self.veth(node), "up")
            ip("-n", ns, "addr", "add", f"{self.address[node]}/{self.subnet.prefixlen}", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "route", "add", "default", "via", self.gateway)
            # A UTS namespace kept alive by a bind mount on a file, like `ip netns add`
            # keeps a network namespace.
            uts = self.uts_file(node)
            uts.touch()
            self.record("uts", str(uts))
            subprocess.run(["unshare", f"--uts={uts}", "hostname", node], check=True)
            (self.root / "nodes").mkdir(exist_ok=True)
            (self.root / "nodes" / node).write_text(f"{ns} {uts}\n")
        return self

    def enter(self, node):
        """The command prefix that runs a program on `node`."""
        return [NSENTER, f"--net=/run/netns/{self.netns(node)}", f"--uts={self.uts_file(node)}", "--"]

    def popen(self, node, arguments, **options):
        process = subprocess.Popen(self.enter(node) + list(map(str, arguments)), **options)
        self.record("pids", process.pid)
        return process

    def run(self, node, arguments, **options):
        return subprocess.run(self.enter(node) + list(map(str, arguments)), **options)

    # -- what happens to nodes ---------------------------------------------------------------------
    def pids(self, node):
        """Every process in the node's network namespace."""
        out = ip("netns", "pids", self.netns(node), check=False).stdout
        return [int(p) for p in out.split()]

    def crash(self, node):
        """What a node's power loss does to its processes: SIGKILL, all at once, until
        none is left (a dying slurmd's children may start after the first sweep)."""
        deadline = time.time() + 10
        while (pids := self.pids(node)) and time.time() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        return not self.pids(node)

    def link(self, node, up):
        ip("link", "set", self.veth(node), "up" if up else "down")

    def slow(self, node, on=True):
        """Slows the node's link both ways: a 50 ms delay where the kernel has netem,
        otherwise a token-bucket rate limit (a kernel may lack sch_netem). Returns what
        was applied, for the test's report."""
        sides = [[], ["-n", self.netns(node)]]
        devices = [self.veth(node), "eth0"]
        if not on:
            for side, device in zip(sides, devices):
                subprocess.run(["tc", *side, "qdisc", "del", "dev", device, "root"], capture_output=True)
            return None
        for qdisc, said in ((["netem", "delay", "50ms"], "netem delay 50ms each way"),
                            (["tbf", "rate", "4mbit", "burst", "16kb", "latency", "400ms"],
                             "tbf rate 4mbit each way (this kernel has no sch_netem)")):
            results = [subprocess.run(["tc", *side, "qdisc", "replace", "dev", device, "root", *qdisc],
                                      capture_output=True, text=True) for side, device in zip(sides, devices)]
            if all(r.returncode == 0 for r in results):
                return said
        raise RuntimeError(f"tc could not slow {node}'s link: {results[0].stderr.strip()}")

    def close(self):
        """Removes everything made, in reverse order; the reaper then finds nothing."""
        for pid in self.made["pids"]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for node in self.nodes:
            if self.netns(node) in self.made["netns"]:
                self.crash(node)
        teardown(self.made)
        self.made = {"netns": [], "links": [], "uts": [], "pids": []}
        (self.root / "made.json").write_text(json.dumps(self.made))
        if self.reaper:
            self.reaper.stdin.close()
            self.reaper.wait(timeout=30)


def teardown(made):
    """Removes what `made` lists; what is already gone is skipped."""
    for uts in made.get("uts", []):
        subprocess.run(["umount", uts], capture_output=True)
        Path(uts).unlink(missing_ok=True)
    for ns in made.get("netns", []):
        for pid in ip("netns", "pids", ns, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        ip("netns", "del", ns, check=False)
    for link in reversed(made.get("links", [])):
        if re.fullmatch(r"[\w.-]+", link):
            ip("link", "del", link, check=False)
