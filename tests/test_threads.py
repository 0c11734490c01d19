"""Thread settings of a training process (``avmae.train.threads``, ``avmae/_openmp.py``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from avmae.config import ConfigError, load_config
from avmae.train import threads
from avmae.train.loaders import build_loader

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_auto_uses_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # pinned to one core of many
    monkeypatch.setattr(threads, "_cgroup_cpu_limit", lambda: None)
    s = threads.configure_threads("auto")
    assert (s.intra_op, s.usable_cpus, torch.get_num_threads()) == (1, 1, 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert threads.configure_threads("auto").intra_op == 4
    monkeypatch.setattr(threads, "_cgroup_cpu_limit", lambda: 2)  # a container's CPU quota caps it
    assert threads.usable_cpus() == 2 and threads.configure_threads("auto").intra_op == 2


def test_explicit_count_and_omp_num_threads(monkeypatch, caplog):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads, "_cgroup_cpu_limit", lambda: None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    s = threads.configure_threads("auto")
    assert (s.intra_op, s.source) == (1, "OMP_NUM_THREADS")
    s = threads.configure_threads(3)  # train.threads wins, with a warning: more threads than cores
    assert (s.intra_op, s.source, torch.get_num_threads()) == (3, "train.threads", 3)
    assert "3 intra-op threads on 2 usable core(s)" in caplog.text
    with pytest.raises(ConfigError, match="train.threads"):
        threads.configure_threads("two")


def test_config_key_is_validated():
    assert load_config([], ["train.threads=2"]).train.threads == "2"
    assert load_config([], []).train.threads == "auto"
    with pytest.raises(ConfigError, match="train.threads"):
        load_config([], ["train.threads=0"])


class ThreadCount(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"threads": torch.get_num_threads()}


def test_dataloader_workers_run_one_thread_each():
    torch.set_num_threads(2)
    loader = build_loader(ThreadCount(), 2, num_workers=2, seed=0, pin_memory=False)
    assert [int(t) for b in loader for t in b["threads"]] == [1, 1, 1, 1]


def test_wait_policy_is_passive_unless_chosen():
    """The OpenMP runtime reads OMP_WAIT_POLICY when torch loads it: avmae sets PASSIVE unless the
    variable is set or AVMAE_OMP_WAIT_POLICY=keep, and says when torch was loaded before it."""
    from avmae._openmp import set_default_wait_policy

    env = {}
    assert set_default_wait_policy(env, torch_loaded=False) == "PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert set_default_wait_policy(env, torch_loaded=False) == "ACTIVE" and env["OMP_WAIT_POLICY"] == "ACTIVE"
    env = {"AVMAE_OMP_WAIT_POLICY": "keep"}
    assert set_default_wait_policy(env, torch_loaded=False) == "unset" and "OMP_WAIT_POLICY" not in env
    env = {}
    assert set_default_wait_policy(env, torch_loaded=True) is None and env == {
        "OMP_WAIT_POLICY": "PASSIVE"
    }  # children get it


def test_avmae_sets_the_policy_before_torch_loads():
    """In a fresh interpreter ``import avmae`` runs the policy hook before anything imports torch."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "AVMAE_OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = str(ROOT)
    code = (
        "import avmae, os; from avmae import _openmp; print(os.environ.get('OMP_WAIT_POLICY'), _openmp.policy_at_load)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["PASSIVE", "PASSIVE"]
