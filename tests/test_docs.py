"""The README and the docs/ pages stay true: every command they show runs a script that exists with options the script
takes, every repository file they name exists, and every relative link points to a file (and heading) that exists."""

import functools
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO_ROOT


PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

# A file of this repository named in a page: the scripts, their configs, the lab and model modules, the tests.
REPO_FILE = re.compile(
    r"(?<![\w./-])((?:examples|convert|benchmarks|diffclip_lab|modeling_diffclip|tests|\.ci)/[\w./-]*\.(?:py|sh|yaml))"
)
SCRIPT = re.compile(r"^(?:\./)?((?:examples|convert|benchmarks)/[\w/]+\.py)$")
OPTION = re.compile(r"^\[?(--[A-Za-z][\w-]*)")
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.M | re.S)
ANY_BLOCK = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SEPARATORS = {"&&", "||", ";", "|", "&"}
# The scripts that hand everything after `--` to another script, as their --help says.
PASSES_ON = {"examples/study.py": "examples/pretrain.py", "benchmarks/bench_demo.py": "examples/pretrain.py"}


def page_name(page: Path) -> str:
    return str(page.relative_to(REPO_ROOT))


def commands(text: str) -> list[str]:
    """The shell commands of a page: each line of its shell blocks (continuations joined) and each inline code span
    of its prose that names a script."""
    found = [line for block in SHELL_BLOCK.findall(text) for line in block.replace("\\\n", " ").splitlines()]
    prose = ANY_BLOCK.sub("", text)
    found += [span.replace("\n", " ") for span in INLINE_CODE.findall(prose) if REPO_FILE.search(span)]
    return [command for command in found if command.strip()]


def words(command: str) -> list[str]:
    """A command's words as the shell splits them (comments dropped); a quoted argument holding a script's command,
    as in `srun bash -c '... examples/pretrain.py ...'`, is split in turn."""
    result = []
    for word in shlex.split(command, comments=True):
        if " " in word and REPO_FILE.search(word):
            result.extend(words(word))
        else:
            result.append(word)
    return result


@dataclass
class ScriptCall:
    script: str
    subcommand: str | None = None  # the first positional word: a subcommand if the script's --help lists it
    options: list[str] = field(default_factory=list)
    passed_on: list[str] | None = None  # the options after `--`, where there is one


def script_calls(command: str) -> list[ScriptCall]:
    """Each script a command runs, with the options it is given."""
    calls, call = [], None
    split = [part for word in words(command) for part in re.split(r"(?<=.)(;|(?<!&)&)$", word) if part]
    for word in split:
        if SCRIPT.match(word):
            call = ScriptCall(SCRIPT.match(word).group(1))
            calls.append(call)
        elif call is None:
            continue
        elif word in SEPARATORS:
            call = None
        elif word == "--" and call.passed_on is None:
            call.passed_on = []
        elif OPTION.match(word):
            (call.options if call.passed_on is None else call.passed_on).append(OPTION.match(word).group(1))
        elif call.subcommand is None and not call.options and call.passed_on is None:
            call.subcommand = word
    return calls


def options_shown() -> dict[tuple[str, str | None], set[tuple[str, str, str]]]:
    """(script, subcommand) -> {(page, command, option)} over every page."""
    shown = {}
    for page in PAGES:
        for command in commands(page.read_text()):
            where = (page_name(page), " ".join(command.split()))
            for call in script_calls(command):
                shown.setdefault((call.script, call.subcommand), set()).update((*where, o) for o in call.options)
                if call.passed_on is None:
                    continue
                if call.script not in PASSES_ON:
                    shown[call.script, call.subcommand].add((*where, "-- (this script passes nothing on)"))
                    continue
                shown.setdefault((PASSES_ON[call.script], None), set()).update((*where, o) for o in call.passed_on)
    return shown


# Runs each `(script, subcommand)` with `--help` in one interpreter: the scripts' imports (torch, transformers, the
# lab) are paid once instead of once per script.
HELP_RUNNER = """
import contextlib, io, json, runpy, sys
helps = {}
for script, subcommand in json.loads(sys.argv[1]):
    sys.argv = [script, *([subcommand] if subcommand else []), "--help"]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exit:
            code = exit.code or 0
    helps[f"{script} {subcommand or ''}"] = [code, out.getvalue(), err.getvalue()[-2000:]]
print(json.dumps(helps))
"""


def run_help(calls: list[tuple[str, str | None]]) -> dict[tuple[str, str | None], str]:
    """`python SCRIPT [SUBCOMMAND] --help` for each call, offline, in one fresh interpreter."""
    argv = [sys.executable, "-c", HELP_RUNNER, json.dumps(calls)]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr[-2000:]
    helps = json.loads(completed.stdout.splitlines()[-1])
    texts = {}
    for script, subcommand in calls:
        code, out, err = helps[f"{script} {subcommand or ''}"]
        assert code == 0, f"{script} {subcommand or ''} --help failed:\n{err}"
        texts[script, subcommand] = out
    return texts


@functools.cache
def all_help() -> dict[tuple[str, str | None], str]:
    """The --help of every script the pages run, and of each subcommand they name."""
    scripts = sorted({script for script, _ in SHOWN} | set(PASSES_ON.values()))
    texts = run_help([(script, None) for script in scripts])
    named = sorted({(s, c) for s, c in SHOWN if c is not None and c in subcommands(texts[s, None])})
    return texts | (run_help(named) if named else {})


def help_text(script: str, subcommand: str | None = None) -> str:
    return all_help()[script, subcommand]


def accepted_options(help_output: str) -> set[str]:
    """The long options argparse lists (the lines `  -x, --name VALUE   help`), not those its prose mentions."""
    accepted = set()
    for line in help_output.splitlines():
        invocation = re.match(r"^  (-\S.*?)(?:\s{2,}|$)", line)
        if invocation:
            accepted.update(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", invocation.group(1)))
    return accepted


def subcommands(help_output: str) -> set[str]:
    """The subcommands in a usage line (`{plan,backends,report}`), not an option's choices (`--shapes {tiny,...}`)."""
    usage = help_output.split("\n\n", 1)[0]
    return {name for group in re.findall(r"(?<![\w-] )\{([\w,-]+)\}", usage) for name in group.split(",")}


SHOWN = options_shown()


@pytest.mark.slow  # one fresh interpreter runs every --help
@pytest.mark.parametrize("script", sorted({script for (script, _), uses in SHOWN.items() if uses}))
def test_every_option_shown_is_one_the_script_takes(script):
    if script in PASSES_ON:
        assert Path(PASSES_ON[script]).name in help_text(script), f"{script}'s --help does not say where -- goes"
    wrong = []
    for (name, subcommand), uses in SHOWN.items():
        if name != script or not uses:
            continue
        if subcommand is not None and subcommand not in subcommands(help_text(script)):
            subcommand = None  # a positional argument, not a subcommand
        accepted = accepted_options(help_text(script, subcommand))
        assert "--help" in accepted, f"no options found in {script}'s --help"
        wrong += [f"{page}: `{command}`: {option}" for page, command, option in sorted(uses) if option not in accepted]
    assert not wrong, "options the script does not take:\n" + "\n".join(wrong)


def test_every_repository_file_named_exists():
    missing = [
        f"{page_name(page)}: {path}"
        for page in PAGES
        for path in sorted(set(REPO_FILE.findall(page.read_text())))
        if not (REPO_ROOT / path).exists()
    ]
    assert not missing, "files the docs name that are not in the repository:\n" + "\n".join(missing)


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    anchors = set()
    for line in ANY_BLOCK.sub("", page.read_text()).splitlines():
        if line.startswith("#"):
            anchor = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            numbered, n = anchor, 0
            while numbered in anchors:
                n += 1
                numbered = f"{anchor}-{n}"
            anchors.add(numbered)
    return anchors


def test_every_relative_link_points_to_a_file_and_heading_that_exist():
    broken = []
    for page in PAGES:
        prose = INLINE_CODE.sub("", ANY_BLOCK.sub("", page.read_text()))
        for target in LINK.findall(prose):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page_name(page)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
                broken.append(f"{page_name(page)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_test_command_is_what_ci_runs():
    # ../shared/tools/fresh-clone-test runs the README's first line that mentions pytest, outside a comment or code
    # fence; .ci/run runs the same steps one by one.
    readme_lines = (REPO_ROOT / "README.md").read_text().splitlines()
    command = next(line for line in readme_lines if re.match(r"^[^#`].*pytest", line))
    assert command == 'pip install torch==2.13.0 && pip install -e ".[dev]" && python -m pytest -q'
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    for step in command.split(" && "):
        assert re.search(rf"^(python -m )?{re.escape(step)}$", ci, re.M), f"{step!r} is not a step of .ci/run"


def test_the_parser_finds_scripts_options_and_what_is_passed_on():
    # the parser these tests rely on, on the shapes of command the pages use
    command = (
        "accelerate launch --config_file examples/configs/multi_gpu.yaml examples/study.py --output_dir x "
        "[--dry_run] --variants clip|diffclip -- --recipe paper   # --not_an_option"
    )
    assert script_calls(command) == [
        ScriptCall("examples/study.py", None, ["--output_dir", "--dry_run", "--variants"], ["--recipe"])
    ]
    srun = "srun bash -c 'accelerate launch -q examples/pretrain.py --recipe paper' && python convert/x.py --a; ls --b"
    assert script_calls(srun) == [
        ScriptCall("examples/pretrain.py", None, ["--recipe"]),
        ScriptCall("convert/x.py", None, ["--a"]),
    ]
    assert script_calls("python benchmarks/gpu_check.py plan OUT --work DIR") == [
        ScriptCall("benchmarks/gpu_check.py", "plan", ["--work"])
    ]
    help_output = "usage: x [-h] [--shapes {tiny,big}] {plan,report} ...\n\noptions:\n  -h, --help  show\n"
    assert accepted_options(help_output + "  --seeds SEEDS [SEEDS ...]\n    see --other\n") == {"--help", "--seeds"}
    assert subcommands(help_output) == {"plan", "report"}
