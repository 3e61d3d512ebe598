"""A Slurm cluster started by the tests themselves: munged, slurmctld and slurmd, with
a key, ports, state, spool, logs and pid files of their own in a temporary directory,
so neither a system Slurm nor a system munged is touched.

- `Cluster(root)`: one node, `localhost`, in this machine's own namespaces.
- `Cluster(root, network=Network(...))`: one slurmd per node of the namespace network
  (network.py), each started inside its node's namespaces; slurmctld and munged run in
  this machine's namespace, slurmctld reachable from the nodes at the bridge's address.
  Job steps run where their slurmd runs, so a rank's host name and interfaces are its
  node's.

`requirements()` says why a cluster cannot start here (not root, Slurm or munge not
installed), for a visible skip. Where everything is present, daemons that do not start
raise: a broken slurm.conf fails the test that uses it."""
import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("srun", "sbatch", "scontrol", "scancel", "squeue", "sinfo")


def program(name):
    """The full path of a Slurm or munge program; the daemons live in /usr/sbin, which
    not every PATH holds."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def requirements():
    missing = [name for name in DAEMONS + COMMANDS if program(name) is None]
    if missing:
        return (f"Slurm is not installed here ({', '.join(missing)} not found); "
                "scripts/setup.sh installs the Debian packages slurm-wlm and munge")
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (slurmd runs jobs as their user, munged as munge)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no munge user: the Debian package munge creates it"
    return None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def terminate_with_parent():
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def tail(path, lines=20):
    path = Path(path)
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no file)"


class Cluster:
    def __init__(self, root, env, network=None, cpus_per_node=None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.network = network
        self.processes = {}
        # munged checks that its socket's directory is reachable by everyone and owned
        # by its user, which pytest's private temporary directories are not.
        self.munge_dir = Path(tempfile.mkdtemp(prefix="ftrain-munge-"))
        munge = pwd.getpwnam("munge")
        os.chmod(self.munge_dir, 0o755)
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        os.chown(key, munge.pw_uid, munge.pw_gid)
        self.munge_socket = self.munge_dir / "munge.socket"
        self.conf = self.root / "slurm.conf"
        for folder in ("state", "spool"):
            (self.root / folder).mkdir(exist_ok=True)
        cpus = os.cpu_count()
        self.nodes = network.nodes if network else ["localhost"]
        if network:
            # Every node claims cpus_per_node CPUs of this one machine (config_overrides:
            # slurmd does not drain a node for having fewer); no binding, since the nodes
            # share the CPUs.
            cpus = cpus_per_node or max(cpus, 4)
            controller = f"localhost({network.gateway})"
            node_lines = "\n".join(f"NodeName={node} NodeAddr={network.address[node]} CPUs={cpus} RealMemory=1000 "
                                   "State=UNKNOWN" for node in self.nodes)
            per_node = "/%n"
            task_plugin = "task/none"
            self.tmp_fs = self.root / "tmp"
            self.tmp_fs.mkdir(exist_ok=True)
            extra = f"SlurmdParameters=config_overrides\nTmpFS={self.tmp_fs}\n"
        else:
            controller = "localhost"
            node_lines = f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN"
            per_node = ""
            # CPU binding (srun --cpu-bind) needs task/affinity; where this process may
            # not use every CPU (a cpuset container) Slurm's CPU numbers would not be ours.
            task_plugin = "task/affinity" if len(os.sched_getaffinity(0)) == cpus else "task/none"
            extra = ""
        self.conf.write_text(f"""\
ClusterName=ftraintest
SlurmctldHost={controller}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits for its old credential to expire before it starts again:
# 10 s instead of the default 120 s.
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool{per_node}
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd{per_node.replace('/', '-')}.pid
SlurmctldLogFile={self.root}/slurmctld.log
SlurmdLogFile={self.root}/slurmd{per_node.replace('/', '-')}.log
MailProg=/bin/true
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin={task_plugin}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
ReturnToService=2
# A node whose slurmd stops answering is DOWN after 20 s (default 300), its job
# requeued or ended.
SlurmdTimeout=20
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
{extra}{node_lines}
PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
""")
        # The environment of every Slurm command and job: this cluster's config and none
        # of the variables of a Slurm job the tests may themselves be running in.
        self.env = {key: value for key, value in env.items()
                    if not key.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
        self.env["SLURM_CONF"] = str(self.conf)

    def slurmd_log(self, node):
        return self.root / (f"slurmd-{node}.log" if self.network else "slurmd.log")

    def start_daemon(self, name, arguments, node=None, **options):
        # A session of their own keeps Ctrl-C from them until stop() has cancelled the
        # jobs; the parent-death signal ends them should pytest itself be killed.
        log = open(self.root / f"{name}.out", "w")
        prefix = self.network.enter(node) if node else []
        self.processes[name] = subprocess.Popen(prefix + arguments, stdout=log, stderr=subprocess.STDOUT,
                                                env=self.env, start_new_session=True,
                                                preexec_fn=terminate_with_parent, **options)
        if self.network:
            self.network.record("pids", self.processes[name].pid)
        log.close()

    def start(self):
        munge = self.munge_dir
        self.start_daemon("munged", [program("munged"), "--foreground", f"--socket={self.munge_socket}",
                                     f"--key-file={munge}/munge.key", f"--pid-file={munge}/munged.pid",
                                     f"--seed-file={munge}/munged.seed", f"--log-file={munge}/munged.log"],
                          user="munge", group="munge", extra_groups=[])
        self.wait_for(lambda: self.munge_socket.exists(), 10, "munged to create its socket")
        self.start_daemon("slurmctld", [program("slurmctld"), "-D"])
        self.start_slurmd()
        self.wait_for(lambda: self.idle() == set(self.nodes), 60, "every node to be idle")

    def start_slurmd(self, nodes=None):
        for node in nodes or self.nodes:
            if self.network:
                # Each node's own /tmp at TmpFS, in a mount namespace of the node's
                # slurmd (and so of its jobs): Slurm's PMIx makes a directory there named
                # by job and step only, which two nodes sharing one /tmp would collide on.
                # A node started again after a crash starts like a rebooted one, with an
                # empty spool and /tmp: Slurm's PMIx plugin neither replaces nor removes
                # the socket and directory a killed step left, so a requeued job (same
                # job and step ids) could not start its step there.
                spool = self.root / "spool" / node
                local_tmp = self.root / "node-local" / node
                for folder in (spool, local_tmp):
                    shutil.rmtree(folder, ignore_errors=True)
                    folder.mkdir(parents=True)
                self.start_daemon(f"slurmd-{node}", [
                    "unshare", "--mount", "--propagation", "slave", "sh", "-c",
                    'mount --bind "$1" "$2" && exec "$3" -D -N "$4"', "sh", local_tmp, self.tmp_fs,
                    program("slurmd"), node], node=node)
            else:
                self.start_daemon("slurmd", [program("slurmd"), "-D", "-N", "localhost"])

    def node_states(self):
        out = self.slurm("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout
        return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)

    def idle(self):
        return {node for node, state in self.node_states().items() if state == "idle"}

    def wait_for(self, ready, seconds, what):
        deadline = time.time() + seconds
        while not ready():
            for name, process in self.processes.items():
                if process.poll() is not None and name in ("munged", "slurmctld"):
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail(self.root / f'{name}.out')}")
            if time.time() > deadline:
                raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")
            time.sleep(0.2)

    def logs(self):
        paths = [("munged", self.munge_dir / "munged.log"), ("slurmctld", self.root / "slurmctld.log")]
        paths += [(f"slurmd {node}", self.slurmd_log(node)) for node in self.nodes]
        return "\n".join(f"--- {name}\n{tail(path)}" for name, path in paths)

    def slurm(self, *arguments, check=True, timeout=60, env=None, **options):
        result = subprocess.run(arguments, capture_output=True, text=True, env={**self.env, **(env or {})},
                                timeout=timeout, **options)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, arguments))} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def job(self, job_id):
        """The job's fields from `scontrol show job`, e.g. JobState, Restarts."""
        text = self.slurm("scontrol", "-o", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def stop(self):
        # Jobs first, so that no slurmstepd outlives slurmd; then the daemons, by pid.
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            self.slurm("scancel", "--partition=debug", check=False)
            deadline = time.time() + 30
            while time.time() < deadline and self.slurm("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.5)
        for name in sorted(self.processes, key=lambda n: ("slurmd", "slurmctld", "munged").index(n.split("-")[0])):
            process = self.processes[name]
            if process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.munge_dir, ignore_errors=True)


def started(cluster, what):
    """`cluster`, started, for a fixture to yield. Everything it needs is here
    (installed, root, the munge user), so a daemon that does not start is a broken
    fixture or slurm.conf, not a missing prerequisite: the test fails, naming `what`."""
    import pytest
    try:
        start_cluster(cluster)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        pytest.fail(f"Slurm is installed and this runs as root, but {what} did not start: {error}")
    return cluster


def start_cluster(cluster):
    """Starts `cluster`; a daemon that does not start is a failure, raised as
    RuntimeError with the logs, after the others are stopped."""
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster
