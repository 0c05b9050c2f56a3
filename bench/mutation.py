"""The standing mutation check: mutmut per module, each against the tests that exercise it, kill rate per module.

Run: ``python bench/mutation.py [--groups protocol,bundle] [--sample 4] [--tests-rev REV] [--jobs 2]``
(or ``./dev mutate ...``). It writes the report to ``docs/mutation.md`` (``--report`` elsewhere).

Why per module, in a scratch copy each: mutmut reads one ``[tool.mutmut]`` table and runs every
mutant against the tests that reach the mutated function. A module-sized group keeps that set to
the module's own test files (the whole suite would re-run daemon end-to-end tests for every mutant
of a helper), and a scratch copy (``.mutation/GROUP``, git-ignored) lets groups be configured
without touching the checkout. The settings every group shares (copied files, pytest options) are
pyproject.toml's ``[tool.mutmut]``; this file adds only ``only_mutate`` and the test files.

``--sample N`` runs every N-th mutant (by mutmut's own order): the same mutants every time for the
same code, so two runs compare. ``--tests-rev REV`` takes ``tests/`` from a git revision instead of
the work tree: the kill rate of older tests on today's code ("before" in docs/mutation.md).

Kill rate = (killed + timed out) / mutants run. A timeout counts as killed (the mutant hung the
tests past 3x their clean run plus 30 s, pyproject.toml); "without timeouts" is the lower bound
should some of them only have been slow. "No tests" means no selected test reached the function:
a gap, counted as not killed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_runtime.tomlconfig import tomllib  # tomllib, or tomli on Python 3.10

REPO = Path(__file__).resolve().parents[1]
SCRATCH = REPO / ".mutation"
MUTMUT = Path(sys.executable).with_name("mutmut")


@dataclass(frozen=True)
class Group:
    sources: tuple[str, ...]
    tests: tuple[str, ...]


# Where a silent bug costs most, with the tests that are meant to catch it (issue 17).
GROUPS = {
    "simulator": Group(
        ("edge_runtime/simulator.py", "edge_runtime/sim_stages.py", "edge_runtime/akida_rules.py"),
        ("tests/test_simulator.py",),
    ),
    "counters": Group(("edge_runtime/counters.py",), ("tests/test_simulator.py", "tests/test_energy.py")),
    "protocol": Group(("edge_runtime/protocol.py",), ("tests/test_protocol.py",)),
    "pipeline": Group(
        ("edge_runtime/pipeline.py", "edge_runtime/health.py", "edge_runtime/mailbox.py"),
        ("tests/test_daemon_parts.py", "tests/test_pipeline_accounting.py", "tests/test_reload_paths.py"),
    ),
    "bundle": Group(
        ("edge_runtime/bundle.py", "edge_runtime/manifest.py", "edge_runtime/schema.py"),
        ("tests/test_bundle.py", "tests/test_bundle_payload_listing.py", "tests/test_serve_golden_check.py"),
    ),
    "energy": Group(("edge_runtime/energy.py", "edge_runtime/energy_inputs.py"), ("tests/test_energy.py",)),
    "daemon": Group(
        ("edge_runtime/daemon.py",),
        ("tests/test_reload_paths.py", "tests/test_serve_golden_check.py", "tests/test_daemon.py"),
    ),
}

# mutmut's result words, as `mutmut results --all true` prints them.
KILLED = {"killed", "timeout"}
COUNTED = ("killed", "timeout", "survived", "no tests", "suspicious", "segfault", "skipped")


@dataclass(frozen=True)
class Outcome:
    group: str
    counts: dict[str, int]
    seconds: float
    survivors: list[str]

    @property
    def run(self) -> int:
        return sum(self.counts.values())

    @property
    def kill_rate(self) -> float:
        return sum(self.counts.get(k, 0) for k in KILLED) / self.run if self.run else float("nan")

    @property
    def failed_rate(self) -> float:
        """Killed by a failing test only: the lower bound, should a timeout be a slow run rather than a hang."""
        return self.counts["killed"] / self.run if self.run else float("nan")


def tracked_files() -> list[str]:
    """The work tree's files as git sees them (committed or new, never ignored): what a checkout has."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (REPO / name).is_file()]


def prepare(name: str, group: Group, tests_rev: str | None) -> Path:
    """A scratch copy of the work tree whose pyproject.toml configures mutmut for ``group``."""
    root = SCRATCH / name
    shutil.rmtree(root, ignore_errors=True)
    for file in tracked_files():
        target = root / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / file, target)
    if tests_rev:
        shutil.rmtree(root / "tests")
        archive = subprocess.run(["git", "archive", tests_rev, "tests"], cwd=REPO, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    tests = [t for t in group.tests if (root / t).is_file()]  # an older revision may lack newer files
    base = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    table = {**base, "only_mutate": list(group.sources), "pytest_add_cli_args_test_selection": tests}
    lines = [f"{key} = {toml_value(value)}" for key, value in table.items()]
    text = (root / "pyproject.toml").read_text()
    head, _, rest = text.partition("[tool.mutmut]")
    tail = rest[rest.find("\n[") + 1 :] if "\n[" in rest else ""
    (root / "pyproject.toml").write_text(f"{head}[tool.mutmut]\n" + "\n".join(lines) + "\n\n" + tail)
    return root


def toml_value(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def mutmut(root: Path, *args: str, expect: str = "") -> str:
    """mutmut's output; exits on a failure, unless its output holds ``expect``."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([str(MUTMUT), *args], cwd=root, env=env, capture_output=True, text=True)
    if result.returncode and not (expect and expect in result.stdout + result.stderr):
        raise SystemExit(
            f"mutation: mutmut {' '.join(args[:2])} failed in {root}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result.stdout


def results(root: Path) -> dict[str, str]:
    """mutant name -> result word, for every mutant mutmut generated."""
    out = {}
    for line in mutmut(root, "results", "--all", "true").splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            out[name] = status
    return out


def run_group(name: str, group: Group, sample: int, jobs: int, tests_rev: str | None) -> Outcome:
    root = prepare(name, group, tests_rev)
    started = time.monotonic()
    if sample > 1:
        # mutmut has no "generate only": a run filtered on a name that matches nothing generates
        # every mutant, then stops (with an error we expect) before testing any; pick every N-th.
        mutmut(root, "run", "--max-children", str(jobs), "__no_such_mutant__", expect="nothing matches")
        chosen = sorted(results(root))[::sample]
        mutmut(root, "run", "--max-children", str(jobs), *chosen)
    else:
        chosen = None
        mutmut(root, "run", "--max-children", str(jobs))
    seconds = time.monotonic() - started
    found = results(root)
    if chosen is not None:
        found = {k: v for k, v in found.items() if k in set(chosen)}
    counts = {word: sum(1 for v in found.values() if v == word) for word in COUNTED}
    unknown = {v for v in found.values() if v not in COUNTED}
    if unknown:
        raise SystemExit(f"mutation: mutmut reported {sorted(unknown)} in group {name}; not counted")
    survivors = sorted(k for k, v in found.items() if v in ("survived", "no tests"))
    return Outcome(name, counts, seconds, survivors)


def report(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    which = f"1 mutant in {args.sample} (--sample)" if args.sample > 1 else "every mutant"
    lines = [
        f"### Run of {when} on {commit}{' (with uncommitted changes)' if dirty.strip() else ''}",
        "",
        f"`python bench/mutation.py {' '.join(sys.argv[1:])}`; tests from {args.tests_rev or 'the work tree'};"
        f" {which}; {args.jobs} mutmut children.",
        "",
        "| module | mutants run | killed | timed out | survived | no tests | kill rate | without timeouts | run time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in outcomes:
        c = o.counts
        lines.append(
            f"| {o.group} | {o.run} | {c['killed']} | {c['timeout']} | {c['survived']} | {c['no tests']} "
            f"| {o.kill_rate:.1%} | {o.failed_rate:.1%} | {o.seconds / 60:.1f} min |"
        )
    lines += ["", "Survivors (mutmut names; `mutmut show NAME` in `.mutation/MODULE` prints the diff):", ""]
    for o in outcomes:
        shown = o.survivors[:40]
        more = f" and {len(o.survivors) - len(shown)} more" if len(o.survivors) > len(shown) else ""
        lines.append(
            f"- {o.group}: " + (", ".join(f"`{s.rpartition('.')[2]}`" for s in shown) + more if shown else "none")
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated, of: {', '.join(GROUPS)}")
    parser.add_argument("--sample", type=int, default=1, help="run every N-th mutant (1: all)")
    parser.add_argument("--jobs", type=int, default=2, help="mutmut children (this host has 2 cores)")
    parser.add_argument("--tests-rev", help="take tests/ from this git revision (the 'before' column)")
    parser.add_argument("--report", type=Path, help="append the run's section to this file (default: print only)")
    args = parser.parse_args()
    names = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in names if g not in GROUPS]
    if unknown or args.sample < 1 or args.jobs < 1:
        parser.error(f"unknown group(s) {', '.join(unknown)}" if unknown else "--sample and --jobs must be >= 1")
    outcomes = []
    for name in names:
        print(f"mutation: {name} ...", file=sys.stderr, flush=True)
        outcome = run_group(name, GROUPS[name], args.sample, args.jobs, args.tests_rev)
        print(
            f"mutation: {name}: {outcome.kill_rate:.1%} of {outcome.run} killed in {outcome.seconds:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        outcomes.append(outcome)
    text = report(outcomes, args)
    print(text)
    if args.report:
        with open(args.report, "a", encoding="utf-8") as out:
            out.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
