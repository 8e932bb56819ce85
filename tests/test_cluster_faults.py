"""A multi-worker cluster that loses a task: a worker killed, the chief killed, a worker hung
(SIGSTOP). Every other task must end by itself within a bounded time with an error naming the
lost task, and the documented restart (every task run again with the same command) must resume
from the chief's last checkpoint and end with the weights of an uninterrupted run
(``train.deterministic``). Two workers of ``python -m lsnet_tf.train`` on 127.0.0.1 (TF_CONFIG),
the tiny U-Net of tests/test_reliability.py; the error translation is tested in-process too."""
import json
import re
import signal
import subprocess
import time
import types

import pytest
import tensorflow as tf

from lsnet_tf.config import ConfigError, load_config
from lsnet_tf.data import pipeline
from lsnet_tf.training import multi_worker
from test_reliability import REPO, TINY, UNET, checkpoint_arrays, cli, env, free_ports

# A task silent for HEARTBEAT seconds is lost (TensorFlow's default, 10 s: 3 s declared a live
# worker lost on the 2-core machine at a load of 28).
HEARTBEAT = 10
# A survivor must have ended within this many seconds of the fault: the heartbeat timeout, the
# coordination service's check (every second), the abort reaching Python, the error printed and
# the process gone (measured: see docs/training.md, "Failure behaviour"), with room for a loaded
# 2-core machine.
BOUND = 60
EPOCHS = 6
LOST = r"error: lost {task} \((heartbeat timeout|unreachable)\); {me} stops\. Restart every task " \
       r"of the cluster with the same command: they resume from the chief's last checkpoint " \
       r"\((\S+)\)"


def task(i):
    return f"/job:worker/replica:0/task:{i}"


# ----------------------------------------------------------------------------- in-process

def test_timeouts_are_config_keys_with_defaults_and_checks():
    cfg = load_config(None, [])
    assert (cfg.train.heartbeat_timeout, cfg.train.shutdown_timeout,
            cfg.train.collective_timeout) == (10.0, 10.0, 0.0)
    with pytest.raises(ConfigError, match=r"train.heartbeat_timeout must be >= 1 \(seconds\)"):
        load_config(None, ["train.heartbeat_timeout=0.5"])
    with pytest.raises(ConfigError, match=r"train.shutdown_timeout must be >= 1"):
        load_config(None, ["train.shutdown_timeout=0"])
    with pytest.raises(ConfigError, match=r"train.collective_timeout must be >= 0 \(seconds; 0"):
        load_config(None, ["train.collective_timeout=-1"])


def fake_strategy(index):
    """What `lost_task_error` reads of a MultiWorkerMirroredStrategy: this task's name."""
    resolver = types.SimpleNamespace(task_type="worker", task_id=index)
    return types.SimpleNamespace(cluster_resolver=resolver)


def test_errors_of_a_lost_task_name_it_and_the_restart(tmp_path, monkeypatch):
    ports = [23456, 23457]
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": 0}}))
    ckpts = str(tmp_path / "checkpoints")

    # The coordination service's own words (the leader saw task 1's heartbeats stop).
    e = tf.errors.UnavailableError(None, None, (
        "{{function_node __wrapped__CollectiveReduceV2_Nordering_token_1_device_/job:worker/"
        "replica:0/task:0/device:CPU:0}} Collective ops is aborted by: Task /job:worker/replica:0/task:1 heartbeat timeout. "
        "This indicates that the remote task has failed\nAdditional GRPC error information"))
    lost = multi_worker.lost_task_error(e, fake_strategy(0), ckpts)
    assert isinstance(lost, multi_worker.ClusterError)
    assert str(lost).startswith(
        "lost /job:worker/replica:0/task:1 (heartbeat timeout); /job:worker/replica:0/task:0 "
        "stops. Restart every task of the cluster with the same command: they resume from the "
        "chief's last checkpoint (none yet: from the start). TensorFlow: UnavailableError: "
        "Collective ops is aborted by: Task /job:worker/replica:0/task:1 heartbeat timeout.")
    assert "Additional GRPC" not in str(lost)  # the first line of TensorFlow's message only

    # An RPC error names the peer's address, not its task; this task's own name is no answer.
    e = tf.errors.UnavailableError(None, None, (
        f"/job:worker/replica:0/task:1: failed to connect to all addresses; last error: "
        f"ipv4:127.0.0.1:{ports[0]}: Connection refused"))
    assert str(multi_worker.lost_task_error(e, fake_strategy(1), ckpts)).startswith(
        "lost /job:worker/replica:0/task:0 (unreachable); /job:worker/replica:0/task:1 stops.")
    # A port that only begins like a cluster member's is not that member.
    e = tf.errors.UnavailableError(None, None, f"ipv4:127.0.0.1:{ports[0]}1: refused")
    assert "lost a task of the cluster (unreachable)" in str(
        multi_worker.lost_task_error(e, fake_strategy(1), ckpts))
    # This task lost the coordination service: its leader (the chief, else worker 0) is gone.
    e = tf.errors.UnavailableError(None, None, "Failed to send RPC to coordination service")
    assert str(multi_worker.lost_task_error(e, fake_strategy(1), ckpts)).startswith(
        "lost /job:worker/replica:0/task:0 (unreachable)")
    # The service declared this very task lost (its heartbeats came late on a busy machine).
    e = tf.errors.UnavailableError(None, None, "Task /job:worker/replica:0/task:0 heartbeat timeout")
    assert str(multi_worker.lost_task_error(e, fake_strategy(0), ckpts)).startswith(
        "lost /job:worker/replica:0/task:0 itself (its heartbeats came late: a stalled or "
        "overloaded machine? a larger train.heartbeat_timeout tolerates it) (heartbeat timeout)")
    # A collective timeout (train.collective_timeout), with the chief's last checkpoint.
    (tmp_path / "checkpoints").mkdir()
    root = tf.train.Checkpoint(v=tf.Variable(1.0))
    tf.train.CheckpointManager(root, ckpts, 2).save(checkpoint_number=4)
    e = tf.errors.DeadlineExceededError(None, None, "Collective has timed out waiting for peers")
    assert re.match(r"lost a task of the cluster \(collective timeout\); \S+ stops\. .*"
                    r"last checkpoint \(\S+/checkpoints/ckpt-4\)", str(
                        multi_worker.lost_task_error(e, fake_strategy(0), ckpts)))

    # Other errors pass unchanged: a corrupt shard, a bad argument.
    assert multi_worker.lost_task_error(
        tf.errors.DataLossError(None, None, "corrupted record"), fake_strategy(0), ckpts) is None
    assert multi_worker.lost_task_error(
        tf.errors.InvalidArgumentError(None, None, "shape"), fake_strategy(0), ckpts) is None
    assert multi_worker.lost_task_error(ValueError("x"), fake_strategy(0), ckpts) is None

    # Only a multi-worker run translates; a single process's errors pass through as they are.
    single = types.SimpleNamespace(extended=types.SimpleNamespace())
    e = tf.errors.UnavailableError(None, None, "Task /job:worker/replica:0/task:1 heartbeat")
    with pytest.raises(tf.errors.UnavailableError):
        with multi_worker.reporting_lost_tasks(single, ckpts):
            raise e


# ----------------------------------------------------------------------------- the cluster

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    pipeline.resolve_dataset(load_config(None, TINY + [f"data.cache_dir={d}"]).data)
    return str(d)


class Cluster:
    """The two workers of one command on two loopback ports (a restart reuses them); their
    output goes unbuffered to a log file per run and worker."""

    def __init__(self, cmd, tmp_path, name):
        self.cmd, self.tmp_path, self.name = cmd, tmp_path, name
        self.cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
        self.runs = 0
        self.procs = []

    def start(self):
        self.runs += 1
        self.procs, self.paths = [], []
        for i in range(2):
            tf_config = json.dumps({"cluster": self.cluster, "task": {"type": "worker", "index": i}})
            path = self.tmp_path / f"{self.name}{self.runs}-worker{i}.log"
            with open(path, "w") as log:
                self.procs.append(subprocess.Popen(
                    self.cmd, cwd=REPO, env=env(TF_CONFIG=tf_config, PYTHONUNBUFFERED="1"),
                    stdout=log, stderr=subprocess.STDOUT))
            self.paths.append(path)
        return self

    def text(self, i):
        return self.paths[i].read_text()

    def finish(self, timeout=900):
        """Wait for both workers; assert that both end with exit status 0."""
        try:
            for p in self.procs:
                p.wait(timeout)
        finally:
            self.stop()
        for i, p in enumerate(self.procs):
            assert p.returncode == 0, self.text(i)[-3000:]

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()  # a stopped process too
                p.wait(30)


def latest_epoch(checkpoints):
    state = tf.train.get_checkpoint_state(str(checkpoints))
    return int(state.model_checkpoint_path.rpartition("-")[2]) if state else 0


def fault(cluster, checkpoints, victim, sig):
    """Once the chief has written its next checkpoint (training goes on), send `sig` to worker
    `victim`; wait for the other one to end. Returns the epoch of the chief's latest checkpoint,
    the survivor's output, the seconds from the signal to its end and its exit status."""
    target = latest_epoch(checkpoints) + 1
    deadline = time.time() + 900
    while latest_epoch(checkpoints) < target:
        ended = [i for i, p in enumerate(cluster.procs) if p.poll() is not None]
        assert not ended, f"worker {ended[0]} ended before the fault:\n" + cluster.text(
            ended[0])[-3000:]
        assert time.time() < deadline, "no checkpoint within the time limit"
        time.sleep(0.02)
    cluster.procs[victim].send_signal(sig)
    t0 = time.time()
    survivor = cluster.procs[1 - victim]
    try:
        survivor.wait(BOUND + 60)
    except subprocess.TimeoutExpired:
        pass
    seconds = time.time() - t0
    rc = survivor.poll()
    cluster.stop()
    text = cluster.text(1 - victim)
    assert rc is not None, f"the survivor still ran {seconds:.0f} s after the fault:\n" + text[-3000:]
    return latest_epoch(checkpoints), text, seconds, rc


@pytest.mark.slow
def test_a_lost_worker_chief_or_hung_worker_ends_the_other_and_the_restart_resumes_exactly(
        cache, tmp_path):
    """One training run of 2 workers (deterministic) through three faults: worker 1 killed
    (SIGKILL), then the chief (worker 0), then worker 1 stopped (SIGSTOP: a hang), each once
    the chief has written another checkpoint. Each time the other worker ends by itself within
    BOUND seconds, with exit status 1 and an error naming the lost task and the checkpoint to
    resume from; each restart of both (the same command) resumes from it, and the last one
    ends with the weights, batch-norm statistics, optimizer state and counters of an
    uninterrupted run, bit for bit."""
    sets = ["train.strategy=multi_worker", "train.deterministic=true", f"train.epochs={EPOCHS}",
            "train.eval_every=100", f"train.heartbeat_timeout={HEARTBEAT}",
            *UNET]
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    cluster = Cluster(cli(cache, out, *sets), tmp_path, "run")
    # The uninterrupted run of the same command, alongside.
    reference = Cluster(cli(cache, tmp_path / "reference", *sets), tmp_path, "reference").start()
    resume_from = 0
    try:
        for victim, sig in [(1, signal.SIGKILL), (0, signal.SIGKILL), (1, signal.SIGSTOP)]:
            cluster.start()
            epoch, text, seconds, rc = fault(cluster, checkpoints, victim, sig)
            print(f"{signal.Signals(sig).name} of worker {victim} after ckpt-{epoch}: worker "
                  f"{1 - victim} ended {seconds:.1f} s later with exit status {rc}")  # pytest -s
            assert rc == 1, text[-3000:]
            assert seconds < BOUND, f"{seconds:.1f} s:\n{text[-3000:]}"
            m = re.search(LOST.format(task=re.escape(task(victim)),
                                      me=re.escape(task(1 - victim))), text)
            assert m, text[-3000:]
            assert m.group(2).endswith(f"checkpoints/ckpt-{epoch}"), m.group(0)
            assert resume_from < epoch < EPOCHS
            if resume_from:  # this run was a restart: it resumed where the last one stopped
                assert f"ckpt-{resume_from} at epoch {resume_from} " in text, text[-3000:]
            resume_from = epoch
        cluster.start().finish()
        reference.finish()
    finally:
        cluster.stop()
        reference.stop()
    for i in range(2):
        assert f"ckpt-{resume_from} at epoch {resume_from} " in cluster.text(i)
    assert (out / "eval.json").is_file()

    resumed = tf.train.latest_checkpoint(str(checkpoints))
    a = checkpoint_arrays(resumed)
    b = checkpoint_arrays(tf.train.latest_checkpoint(str(tmp_path / "reference" / "checkpoints")))
    assert resumed.endswith(f"ckpt-{EPOCHS}") and sorted(a) == sorted(b) and len(a) > 50
    for k in a:
        assert (a[k] == b[k]).all(), k
    iterations = [k for k in a if k.endswith("iterations/.ATTRIBUTES/VARIABLE_VALUE")]
    assert iterations and all(int(a[k]) == EPOCHS * 2 for k in iterations)
