"""Jobs across emulated hosts (tests/multihost/hosts.sh): 2 hosts x 2 ranks, each host its own
network namespace, address and hostname; ranks started through the launcher's remote agent
(tests/multihost/agent.sh in place of ssh) and talking TCP between separate network stacks."""
import re
import subprocess
import time

import pytest

from bed import REPO, mpirun, on_host, python_script

pytestmark = pytest.mark.usefixtures("bed")

# ids must not be the bare word "mpi": pytest-mpi would take it for its marker and skip.
IMPLS = pytest.mark.parametrize("impl", ["mpi", "hierarchical"],
                                ids=["impl-mpi", "impl-hierarchical"])


def test_hosts_have_their_own_name_address_and_network():
    names = {h: on_host(h, ["hostname"])[0].stdout.strip() for h in ("node1", "node2")}
    assert names == {"node1": "node1", "node2": "node2"}
    addr = {h: on_host(h, ["ip", "-4", "-br", "addr", "show", "eth0"])[0].stdout.split()[2]
            for h in ("node1", "node2")}
    assert addr == {"node1": "10.213.0.1/24", "node2": "10.213.0.2/24"}, addr
    # The machine's own network namespace has no interface on the bed's subnet.
    mine = subprocess.run(["ip", "-4", "-br", "addr"], capture_output=True, text=True).stdout
    assert "10.213.0." not in mine, mine


@IMPLS
def test_topology_sees_two_hosts_and_data_crosses_tcp(impl):
    proc, _ = mpirun(python_script("topology_check.py", impl), timeout_s=90)
    assert proc.returncode == 0, proc.stdout
    # Ranks' lines may interleave in the launcher's output: match records, not lines.
    found = sorted(re.findall(r"ok rank (\d) (node\d) \['([\d.]+)'\] node (\d)/2", proc.stdout))
    assert found == [("0", "node1", "10.213.0.1", "0"), ("1", "node1", "10.213.0.1", "0"),
                     ("2", "node2", "10.213.0.2", "1"), ("3", "node2", "10.213.0.2", "1")], \
        proc.stdout


def test_every_collective_across_two_hosts():
    """tests/comm's collectives (mpi and hierarchical on the real topology) on 2 hosts x 2."""
    proc, _ = mpirun(["python", "-m", "mpi4py", "-m", "pytest", "-q", "-p",
                            "no:cacheprovider", "--with-mpi", "-m", "mpi",
                            "tests/comm/test_comm_collectives.py", "-k", "not nodes"],
                           timeout_s=300)
    assert proc.returncode == 0, proc.stdout[-5000:]
    passed = re.findall(r"(\d+) passed", proc.stdout)
    assert passed and int(passed[-1]) >= 100, proc.stdout[-3000:]


@IMPLS
def test_data_parallel_on_two_hosts_equals_one_rank(impl):
    proc, _ = mpirun(python_script("dp_exact.py", impl), timeout_s=120)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.count("dp exact rank") == 4, proc.stdout


def _start_loop(impl, seconds=60, launcher_args=(), **env):
    from bed import HERE, job_env

    cmd = [str(HERE / "mpirun.sh"), *launcher_args, "-n", "4", "-ppn", "2",
           *python_script("allreduce_loop.py", impl, seconds)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=job_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc


def _wait_looping(proc, timeout_s=60):
    """Read the job's output until all 4 ranks say they loop; returns the lines read."""
    lines, deadline = [], time.monotonic() + timeout_s
    while "".join(lines).count("looping") < 4:
        assert time.monotonic() < deadline, "".join(lines)
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "job ended early:\n" + "".join(lines)
        lines.append(line)
    return lines


def _pids_on(host, name_pattern=None):
    out = subprocess.run(["ip", "netns", "pids", f"mpinet-{host}"], capture_output=True,
                         text=True).stdout.split()
    if name_pattern is None:
        return [int(p) for p in out]
    found = []
    for p in out:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if re.search(name_pattern, f.read().decode(errors="replace")):
                    found.append(int(p))
        except OSError:
            pass
    return found


JOB_PROCESSES = r"hydra_pmi_proxy|allreduce_loop"


def _assert_nothing_left(within_s=10):
    """No process of the job may outlive it on any host."""
    deadline = time.monotonic() + within_s
    while any(_pids_on(h, JOB_PROCESSES) for h in ("node1", "node2")):
        assert time.monotonic() < deadline, \
            {h: _pids_on(h, JOB_PROCESSES) for h in ("node1", "node2")}
        time.sleep(0.2)


def _finish(proc, timeout_s):
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the job did not end within {timeout_s} s:\n{out}")
    return out


@IMPLS
def test_killing_every_process_of_a_host_ends_the_job(impl):
    proc = _start_loop(impl)
    try:
        head = "".join(_wait_looping(proc))
        # Everything of the job on node2: the launcher's proxy and the ranks (the bed's slurmd,
        # if any, lives on for the Slurm tests).
        victims = _pids_on("node2", JOB_PROCESSES)
        assert len(victims) >= 3, victims
        start = time.monotonic()
        for pid in victims:
            try:
                subprocess.run(["kill", "-9", str(pid)], check=False)
            except OSError:
                pass
        out = head + _finish(proc, 30)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    assert elapsed < 10, f"the job took {elapsed:.1f} s to end:\n{out}"
    assert "rank 0 finished" not in out and "rank 1 finished" not in out, out
    # The lost host is named (by the launcher's agent, as ssh does), and which ranks ran there
    # was printed at start by rank 0 (as mpinet.train does).
    assert "connection to node2 lost" in out, out
    assert "node1: ranks 0-1, node2: ranks 2-3" in out, out
    _assert_nothing_left()


@IMPLS
def test_killing_the_ranks_of_a_host_names_them(impl):
    """The ranks die, the launcher's proxy survives (a crash or OOM kill): hydra names the host
    and the pid; the start lines map it to ranks."""
    proc = _start_loop(impl)
    try:
        head = "".join(_wait_looping(proc))
        victims = _pids_on("node2", r"allreduce_loop")
        assert len(victims) == 2, victims
        start = time.monotonic()
        for pid in victims:
            subprocess.run(["kill", "-9", str(pid)], check=False)
        out = head + _finish(proc, 30)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    assert elapsed < 10, f"the job took {elapsed:.1f} s to end:\n{out}"
    assert "RUNNING AT node2" in out, out
    assert "node1: ranks 0-1, node2: ranks 2-3" in out, out
    assert "rank 0 finished" not in out, out


LINK_TIMEOUT_S = 3


@IMPLS
def test_link_down_ends_the_job_naming_the_silent_ranks(impl):
    """A silent host (its link down: no FIN, no RST) is found by the comm timeout, which names
    the ranks it cannot reach; the job ends within the timeout + 10 s."""
    proc = _start_loop(impl, MPINET_COMM_TIMEOUT=LINK_TIMEOUT_S)
    try:
        head = "".join(_wait_looping(proc))
        start = time.monotonic()
        subprocess.run(["ip", "-n", "mpinet-node2", "link", "set", "eth0", "down"], check=True)
        out = head + _finish(proc, LINK_TIMEOUT_S + 30)
        elapsed = time.monotonic() - start
    finally:
        subprocess.run(["ip", "-n", "mpinet-node2", "link", "set", "eth0", "up"], check=False)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    assert elapsed < LINK_TIMEOUT_S + 10, f"the job took {elapsed:.1f} s to end:\n{out}"
    assert f"did not complete within {LINK_TIMEOUT_S} s" in out, out
    # The report names the silent ranks (2 and 3) and their host.
    reports = [ln for ln in out.splitlines() if ln.startswith("[mpinet] rank") and "node2" in ln]
    assert any(re.search(r"\b2\b.*\b3\b", ln) for ln in reports), out
    _assert_nothing_left()


def test_preflight_across_two_hosts_reports_hosts_and_bandwidth():
    proc, _ = mpirun(["python", "-m", "mpinet.comm.check", "--comm", "mpi,hierarchical",
                      "--size-mb", "8", "--iters", "3"], timeout_s=120)
    out = proc.stdout
    assert proc.returncode == 0, out
    assert "[preflight] 4 rank(s) on 2 host(s)" in out, out
    assert "host node1: interfaces eth0 10.213.0.1, lo 127.0.0.1" in out, out
    assert "host node2: interfaces eth0 10.213.0.2, lo 127.0.0.1" in out, out
    for impl in ("mpi", "hierarchical"):
        assert re.search(rf"\[preflight\] {impl} allreduce of 8 MiB float32: [\d.]+ ms, "
                         rf"algbw [\d.]+ GB/s, busbw [\d.]+ GB/s \(4 ranks, 2 node\(s\)\)",
                         out), out
    assert "[preflight] all checks passed" in out, out


def test_launch_hosts_sh_trains_across_two_hosts(tmp_path):
    """The documented multi-host launcher (launch/hosts.sh) with hydra's remote agent set by
    environment (HYDRA_LAUNCHER_EXEC) instead of ssh: preflight, then one epoch."""
    from bed import HERE, job_env, nodes

    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text("# the emulated hosts\n" + "\n".join(nodes()[:2]) + "\n")
    env = job_env(HYDRA_LAUNCHER="ssh", HYDRA_LAUNCHER_EXEC=HERE / "agent.sh",
                  MPIR_CVAR_CH4_NETMOD="ofi", FI_PROVIDER="tcp", FI_TCP_IFACE="eth0")
    proc, _ = on_host("head", [REPO / "launch" / "hosts.sh", "-f", hostfile, "-N", "2", "--",
                               "--epochs", "1", "--quiet", "--preflight"], timeout_s=180, env=env)
    out = proc.stdout
    assert proc.returncode == 0, out
    assert "comm=mpi (auto: no rank has a GPU; 4 rank(s) on 2 node(s)); " \
           "node1: ranks 0-1, node2: ranks 2-3" in out, out
    assert "[preflight] all checks passed" in out and "final test:" in out, out


# The position read is the same code under both communicators (the arrival tracker): one is
# enough, and it costs 12 s.
def test_survivors_of_a_lost_host_end_themselves_naming_it(impl="mpi"):
    """With the launcher's cleanup off (-disable-auto-cleanup), nothing but mpinet ends the
    survivors: their wait times out, and reading the dead ranks' positions blocks inside MPI
    (MPICH over tcp retries the connection), so a watchdog ends each survivor naming the rank
    and host it was stuck on. Bound: timeout + position read (3 s) + watchdog (5 s)."""
    proc = _start_loop(impl, launcher_args=["-disable-auto-cleanup"],
                       MPINET_COMM_TIMEOUT=LINK_TIMEOUT_S)
    try:
        head = "".join(_wait_looping(proc))
        victims = _pids_on("node2", r"allreduce_loop")
        assert len(victims) == 2, victims
        start = time.monotonic()
        for pid in victims:
            subprocess.run(["kill", "-9", str(pid)], check=False)
        out = head + _finish(proc, LINK_TIMEOUT_S + 40)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    assert elapsed < LINK_TIMEOUT_S + 3 + 5 + 5, f"the job took {elapsed:.1f} s to end:\n{out}"
    assert "rank 0 finished" not in out and "rank 1 finished" not in out, out
    # Each survivor names the lost rank it was stuck on, with its host, and the layout.
    assert re.search(r"\[mpinet\] rank [01]: .*rank [23] \(pid \d+ on host node2\).*"
                     r"node1: \[0, 1\], node2: \[2, 3\]", out), out
    _assert_nothing_left()
