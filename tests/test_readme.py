"""The commands of README.md and of the docs pages (docs/*.md), run in order on a fresh folder with
tiny sizes, so the docs cannot drift from the code.

Every ```bash and ```python block of those files is preceded by ``<!-- readme-test: run -->`` or
``<!-- readme-test: skip, <reason> -->``. The run blocks are executed in order, in this process, with
one temporary folder as the working directory and ``$AVMAE_CACHE``: README.md first, then each page
in the order of mkdocs.yml's nav, so a page may use what the README set up (the runs of its Get
started, ``$D``: the demo clips' folder) and what the pages before it wrote.

- ``python tools/<name>.py ARGS`` runs that tool's ``main(ARGS)``; ``avmae <command> ARGS`` runs
  ``avmae.cli.main``; ``VAR=$(python -c "CODE")`` runs CODE and sets ``$VAR`` to what it printed;
- a python block is run with ``exec``;
- any other command fails the test (write it in one of these forms, or mark its block skip).

Only sizes change, never the commands: training gets ``SIZES`` appended (2 steps, batch 4, no
loader workers), ``evaluate`` ``--num-workers 0 --batch-size 4``, ``load_config`` in a python block
the same ``SIZES``, and the demo clips are generated with 2 training and 3 evaluation clips per class.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
import yaml
from conftest import import_tool

import avmae.cli
import avmae.config
import avmae.data

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
MKDOCS = REPO / "mkdocs.yml"
SIZES = ["schedule.max_steps=2", "train.batch_size=4", "data.num_workers=0"]
TOOL_SIZES = {"train": SIZES, "finetune": SIZES, "evaluate": ["--num-workers", "0", "--batch-size", "4"]}
DEMO_SIZES = dict(num_train_per_class=2, num_eval_per_class=3)  # the README names eval_tone_002

MARK = re.compile(r"^<!--\s*readme-test:\s*(run|skip)\b(.*?)-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
ASSIGN = re.compile(r'^(\w+)=\$\(python -c "(.*)"\)$')
VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
SNIPPET = re.compile(r'^--8<-- "([^"]+)"\s*$', re.M)  # pymdownx.snippets: a file shown in a page


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    mark: str  # "run" | "skip" | "" (none)
    reason: str
    text: str


def readme_blocks(text: str) -> List[Block]:
    """The fenced code blocks of ``text``, each with the marker comment just before it."""
    lines = text.splitlines()
    blocks, i, mark, reason = [], 0, "", ""
    while i < len(lines):
        line = lines[i]
        m = MARK.match(line.strip())
        if m:
            mark, reason = m.group(1), m.group(2).strip(" ,")
            i += 1
            continue
        f = FENCE.match(line)
        if f:
            start, body = i, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(Block(start + 1, f.group(1), mark, reason, "\n".join(body)))
            mark, reason = "", ""
        elif line.strip():
            mark, reason = "", ""  # a marker belongs to the block right after it
        i += 1
    return blocks


def shell_commands(text: str) -> List[str]:
    """The commands of a bash block: continuation lines joined, comment-only and blank lines left out."""
    out, current = [], ""
    for line in text.splitlines():
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip() and not current.lstrip().startswith("#"):
            out.append(current.strip())
        current = ""
    return out


class _NavLoader(yaml.SafeLoader):
    """mkdocs.yml as data; a ``!!python/name:`` tag (markdown extension options) reads as None."""


_NavLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def nav_pages() -> List[str]:
    """The pages of mkdocs.yml's nav, in order, as paths relative to docs/."""

    def walk(entry) -> Iterator[str]:
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, list):
            for item in entry:
                yield from walk(item)
        elif isinstance(entry, dict):
            for value in entry.values():
                yield from walk(value)

    return [p for p in walk(yaml.load(MKDOCS.read_text(encoding="utf-8"), _NavLoader)["nav"]) if p.endswith(".md")]


def documents() -> List[Path]:
    """README.md, then the docs pages in the order of the site's navigation."""
    return [README, *(DOCS / page for page in nav_pages())]


def _name(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_site_lists_every_page_and_every_listed_page_exists():
    pages = nav_pages()
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(set(pages)) == on_disk, "mkdocs.yml's nav and the files under docs/ differ"
    assert len(pages) == len(set(pages)), "a page is listed twice in mkdocs.yml's nav"


def test_every_code_block_is_run_or_skipped_with_a_reason():
    runs = 0
    for doc in documents():
        code = [
            b for b in readme_blocks(doc.read_text(encoding="utf-8")) if b.lang in ("bash", "sh", "shell", "python")
        ]
        unmarked = [f"{_name(doc)}:{b.line}" for b in code if not b.mark]
        assert not unmarked, (
            f"mark these blocks <!-- readme-test: run --> or <!-- readme-test: skip, <reason> -->: {unmarked}"
        )
        assert all(b.reason for b in code if b.mark == "skip"), f"{_name(doc)}: a skipped block says why"
        runs += sum(b.mark == "run" for b in code) if doc == README else 0
    assert runs >= 8, "the README's Get started runs"


def _shown_text(path: Path) -> str:
    """A page's text with the files it shows (snippets) put in, as the site renders it."""
    return SNIPPET.sub(lambda m: (REPO / m.group(1)).read_text(encoding="utf-8"), path.read_text(encoding="utf-8"))


def _slugs(text: str) -> set:
    """Heading anchors of a markdown text, as GitHub and Python-Markdown's toc both make them."""
    inside_code = re.compile(r"^```.*?^```", re.S | re.M)
    headings = re.findall(r"^#+ (.+)$", inside_code.sub("", text), re.M)
    github = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    return github | {re.sub(r"-+", "-", slug) for slug in github}


def test_every_link_to_a_file_or_a_section_finds_it():
    for doc in documents() + [REPO / "BENCHMARKS.md"]:
        text = doc.read_text(encoding="utf-8")
        inside_code = re.compile(r"^```.*?^```", re.S | re.M)
        for target, anchor in re.findall(r"\]\(([\w./-]*)(?:#([^)\s]*))?\)", inside_code.sub("", text)):
            if not target and not anchor:
                continue
            path = (doc.parent / target).resolve() if target else doc
            where = f"{_name(doc)}: ({target}{'#' + anchor if anchor else ''})"
            assert path.exists(), f"{where}: no such file"
            if anchor and path.suffix == ".md":
                assert anchor in _slugs(_shown_text(path)), f"{where}: no such section"
    # the README's own table of contents, at least, links to its sections
    assert re.search(r"\]\(#", README.read_text(encoding="utf-8"))


def test_the_parser_reads_markers_continuations_and_comments():
    text = (
        "<!-- readme-test: run -->\n```bash\na x \\\n  y   # c\n# only a comment\n\nb\n```\ntext\n\n```python\nz\n```\n"
    )
    first, second = readme_blocks(text)
    assert (first.mark, first.lang, first.line) == ("run", "bash", 2)
    assert shell_commands(first.text) == ["a x    y   # c", "b"]
    assert shlex.split(shell_commands(first.text)[0], comments=True) == ["a", "x", "y"]
    assert second.mark == "" and second.lang == "python"


class Runner:
    """Runs README commands in the current folder; ``env`` holds the variables set so far."""

    def __init__(self) -> None:
        self.env: Dict[str, str] = {}

    def expand(self, command: str) -> str:
        def value(m: re.Match) -> str:
            name = m.group(1) or m.group(2)
            if name not in self.env:
                raise AssertionError(f"${name} is not set by an earlier README command")
            return self.env[name]

        return VAR.sub(value, command)

    def shell(self, command: str) -> None:
        assign = ASSIGN.match(command.split("  #")[0].strip())
        if assign:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(assign.group(2), "<python -c>", "exec"), {})
            self.env[assign.group(1)] = out.getvalue().strip()
            return
        argv = shlex.split(self.expand(command), comments=True)
        if argv[:1] == ["python"] and len(argv) > 1 and argv[1].startswith("tools/") and argv[1].endswith(".py"):
            name, args = Path(argv[1]).stem, argv[2:]
            status = self._call(import_tool(name).main, args + TOOL_SIZES.get(name, []))
        elif argv[:1] == ["avmae"] and len(argv) > 1:
            args = argv[2:] + TOOL_SIZES.get(argv[1], [])
            status = self._call(avmae.cli.main, [argv[1], *args])
        else:
            raise AssertionError(
                f"the README test cannot run {command!r}: write it as `python tools/<x>.py ...`, `avmae ...` or"
                ' VAR=$(python -c "..."), or mark its block skip'
            )
        assert status == 0, f"exit status {status}"

    @staticmethod
    def _call(main, argv):
        try:
            return main(list(argv)) or 0
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1

    def python(self, code: str, monkeypatch) -> None:
        original = avmae.config.load_config

        def sized(files=(), overrides=(), **kw):
            return original(files, [*overrides, *SIZES], **kw)

        with monkeypatch.context() as m:
            m.setattr(avmae.config, "load_config", sized)
            exec(compile(code, "<README python block>", "exec"), {"__name__": "readme"})


@pytest.mark.slow  # about half a minute on 2 CPU cores
@pytest.mark.usefixtures("one_thread")
def test_docs_commands_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AVMAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(avmae.data, "ensure_demo_audio", functools.partial(avmae.data.ensure_demo_audio, **DEMO_SIZES))
    monkeypatch.setattr(avmae.data, "ensure_demo_av", functools.partial(avmae.data.ensure_demo_av, **DEMO_SIZES))
    before = _checkout_runs()
    runner = Runner()
    ran: Dict[str, int] = {}
    for doc in documents():
        for block in readme_blocks(doc.read_text(encoding="utf-8")):
            if block.mark != "run":
                continue
            try:
                if block.lang == "python":
                    runner.python(block.text, monkeypatch)
                    ran[doc.name] = ran.get(doc.name, 0) + 1
                else:
                    for command in shell_commands(block.text):
                        runner.shell(command)
                        ran[doc.name] = ran.get(doc.name, 0) + 1
            except BaseException as exc:  # name the block that broke
                raise AssertionError(
                    f"{_name(doc)}:{block.line} ({block.lang} block) failed: {type(exc).__name__}: {exc}"
                ) from exc
    assert ran.get("README.md", 0) >= 10 and sum(ran.values()) >= 15, ran
    # the runs of the flow, each in its own folder, and the files the commands wrote
    for run in ("demo-pre", "demo-ft", "demo-lp", "demo-av", "mydata-ft", "demo-shards", "demo-ast", "mydata-py"):
        assert (tmp_path / "runs" / run / "metrics.jsonl").is_file(), run
    assert (tmp_path / "runs" / "demo-pre" / "recon.png").stat().st_size > 0
    assert (tmp_path / "runs" / "demo-ft" / "results.json").is_file()
    assert (tmp_path / "runs" / "shards" / "index.json").is_file()
    assert _checkout_runs() == before  # nothing was written into the checkout


def _checkout_runs():
    return sorted(p.name for p in (REPO / "runs").iterdir()) if (REPO / "runs").is_dir() else []
