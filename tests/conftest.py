import faulthandler
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

import pytest

# idle OpenMP threads sleep instead of spinning on cores other jobs need (read when torch loads;
# avmae sets the same default, but this process imports torch first)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

# keep test runs quiet and deterministic on 2-core CI machines
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = Path(__file__).resolve().parent.parent


def _in_tree_plugin_entry_points() -> str:
    """The ``[project.entry-points."avmae.*"]`` tables of the in-tree plugin's own pyproject.toml
    (plugins/avmae_eat, a distribution of its own), as an entry_points.txt."""
    import tomllib

    eps = tomllib.loads((ROOT / "plugins" / "avmae_eat" / "pyproject.toml").read_text())["project"].get(
        "entry-points", {}
    )
    return "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in table.items()) + "\n"
        for group, table in eps.items()
        if group.startswith("avmae.")
    )


def _register_in_tree_plugins() -> None:
    """The tests check this tree's in-tree plugins (plugins/), whatever was installed: their folder
    goes first on sys.path (and PYTHONPATH, for child processes), so an install made from another
    checkout, or one that has since moved, does not decide which code runs. Without the plugin
    installed (``pip install -e plugins/avmae_eat``) its entry points are made visible as that
    install would (a dist-info on sys.path), so the tests run in a clone without installing it."""
    from importlib import metadata

    if not (ROOT / "plugins" / "avmae_eat" / "pyproject.toml").is_file():
        return  # this conftest copied outside the tree (tests/test_hang_reports.py): no plugins to add
    paths = [str(ROOT / "plugins")]
    have = {(ep.group, ep.name) for d in metadata.distributions() for ep in d.entry_points}
    wanted = {
        (group, line.split(" = ")[0])
        for group, _, body in (t.partition("]\n") for t in _in_tree_plugin_entry_points().split("[")[1:])
        for line in body.splitlines()
        if " = " in line
    }
    if not wanted <= have:  # not installed, or installed before some of its entry points existed
        import tempfile

        site = Path(tempfile.mkdtemp(prefix="avmae-intree-"))
        dist = site / "avmae_intree_plugins-0.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: avmae-intree-plugins\nVersion: 0.0\n")
        (dist / "entry_points.txt").write_text(_in_tree_plugin_entry_points())
        paths.insert(0, str(site))
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])


_register_in_tree_plugins()


# A test that hangs in a DataLoader worker must show where the worker hangs, not only the main
# process waiting for it (all that pytest-timeout or a DataLoader timeout prints). Every process
# forked from this one (DataLoader workers) inherits this handler: SIGUSR1 prints all its threads'
# Python stacks to stderr. When a test fails, the forked children still alive are asked for
# theirs, which land in the test's captured stderr.
STACKS_SIGNAL = signal.SIGUSR1
faulthandler.register(STACKS_SIGNAL, file=sys.__stderr__, all_threads=True)


def forked_children(pid: int = os.getpid()) -> list:
    """Live children of ``pid`` forked without exec (same command line, so they carry the
    handler above; a subprocess running another program would be killed by the signal)."""

    def cmdline(p):
        with open(f"/proc/{p}/cmdline", "rb") as f:
            return f.read()

    try:
        own = cmdline(pid)
        children = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
    except OSError:  # no /proc (not Linux): nothing to ask
        return []
    alive = []
    for child in children:
        try:
            if cmdline(child) == own:
                alive.append(child)
        except OSError:  # exited meanwhile
            pass
    return alive


def dump_forked_children_stacks(wait: float = 3.0) -> list:
    """Ask the forked children for their stacks (see above), under a line naming them -> their pids."""
    children = forked_children()
    if children:
        print(f"stacks of the forked child processes still alive {children}:", file=sys.stderr, flush=True)
    for child in children:
        try:
            os.kill(child, STACKS_SIGNAL)
        except OSError:
            pass
    if children:
        time.sleep(wait)  # the children write asynchronously (1 s was once too short on a busy CI machine)
    return children


@pytest.hookimpl(hookwrapper=True, trylast=True)  # inside the capture plugin's wrapper
def pytest_runtest_call(item):
    outcome = yield
    if outcome.excinfo is not None:
        dump_forked_children_stacks()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread(monkeypatch):
    """One torch thread for the test, restored afterwards (use with ``pytest.mark.usefixtures``);
    a trainer built in the test keeps it (``train.threads: auto`` follows ``OMP_NUM_THREADS``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(n)


# tools/<name>.py -> the avmae.cli module it wraps (the commands' code lives in the package)
TOOL_MODULES = {"prepare_data": "prepare", "convert_checkpoint": "convert"}
COMMAND_TOOLS = (
    "train",
    "finetune",
    "evaluate",
    "extract",
    "visualize",
    "prepare_data",
    "convert_checkpoint",
    "benchmark",
)


def import_tool(name: str):
    """The module behind ``tools/<name>.py``: ``avmae.cli.<command>`` for a command's wrapper,
    else the script itself imported as module ``tool_<name>``."""
    if name in COMMAND_TOOLS:
        return importlib.import_module(f"avmae.cli.{TOOL_MODULES.get(name, name)}")
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def load_tool():
    """``load_tool(name)``: ``import_tool`` as a fixture."""
    return import_tool


@pytest.fixture(scope="session")
def tiny_av_demo(tmp_path_factory):
    """The generated audio-visual demo clips, one per class in each split."""
    from avmae.data import ensure_demo_av

    return ensure_demo_av(tmp_path_factory.mktemp("demo") / "av", num_train_per_class=1, num_eval_per_class=1)


def tiny_av_config(demo: Path, out: Path, task: str, model: str, *extra: str):
    """A few-step CPU run of a tiny audio-visual model on ``demo`` (64-frame audio), ``extra`` overrides last."""
    from avmae.config import load_config

    return load_config(
        [],
        [
            f"task={task}",
            "modality=av",
            f"model.name={model}",
            f"data.train_manifest={demo / 'train.json'}",
            f"data.eval_manifest={demo / 'eval.json'}",
            f"data.label_csv={demo / 'class_labels_indices.csv'}",
            "data.target_length=64",
            "data.num_workers=0",
            "schedule.max_steps=3",
            "schedule.warmup_epochs=0",
            "optim.lr=1e-3",
            "train.batch_size=3",
            "train.cpu=true",
            "train.mixed_precision=no",
            "eval.every_n_epochs=0",
            "logging.every_n_steps=1",
            "logging.progress=false",
            "logging.tensorboard=false",
            "checkpoint.every_n_epochs=0",
            "checkpoint.keep_last=1",
            f"output_dir={out}",
            *extra,
        ],
    )
