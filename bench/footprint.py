"""What the bare edge install costs, now against a git rev from before the extras split: install, start-up, systemd.

    python bench/footprint.py                       # against c4aafa1 (parent of the extras split)
    python bench/footprint.py --rev c4aafa1 --reps 3 --startup-runs 15 --unit-rev 42cb290~1

Why: issue 16 moved onnx, onnxruntime (and their dependencies) out of the base install and
onnxruntime's import out of every ``edge-runtime`` start. This measures what that bought, side by
side in one run (on a shared host only a comparison made at the same time is fair), and prints
Markdown tables (``docs/results/footprint.md`` holds one run's output).

What it does, for the current tree ("new", a copy of the tracked and untracked-not-ignored files)
and ``--rev`` ("old", checked out with ``git worktree add --detach`` into a temporary directory and
removed afterwards):

1. ``pip install .`` (bare: no extras) into a fresh ``python3.11 -m venv``, each install from a
   fresh copy of the source (no ``build/`` left over from the one before). Timed: the pip command
   only, not the venv's creation. First one install each from the index with its own empty pip
   cache; then ``--reps`` rounds, old/new alternating, of (a) an install from the index with one
   shared pip cache (the union of the two empty-cache runs': meant to make downloads cost the same
   on both sides; where the network's answers carry no cache headers pip's HTTP cache stores
   nothing and every install downloads again, which the report says) and (b) an install offline
   (``--no-index``) from a wheelhouse filled untimed beforehand with ``pip download`` (the
   dependencies and the build requirements): resolving, building the project's wheel and unpacking,
   no network. The MB fetched per install come from pip's "Downloading" lines (this host's pip
   config also reads local wheel directories and indexes: files found there are not fetched).
   Sizes: ``du -sb`` of the venv's site-packages, and each installed distribution's files (from its
   RECORD, .pyc included).
2. ``edge-runtime --help``: one untimed warm-up each, then ``--startup-runs`` runs of each,
   interleaved (old, new, new, old, ...), wall time of the whole process; medians and the ratio. And
   ``python -X importtime`` of the same command (``--importtime-runs`` runs, median per package): the
   five top-level packages outside the project (standard library included) with the largest
   cumulative import time (a package's cumulative time includes whatever it imports first, so the
   numbers overlap).
3. ``systemd-analyze security --offline=yes`` of ``systemd/edge-runtime.service`` at ``--unit-rev``
   (before the hardening commit) and in the current tree: the overall exposure and the settings
   whose verdict changed (with the exposure each unset one adds).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
UNIT = "systemd/edge-runtime.service"
OWN_PACKAGES = {"edge_runtime", "exporter"}
# Run inside each venv: every installed distribution with the bytes of the files its RECORD lists.
DIST_SIZES = """
import importlib.metadata as md, json, os
out = []
for d in md.distributions():
    total = 0
    for f in d.files or []:
        try:
            total += os.path.getsize(d.locate_file(f))
        except OSError:
            pass
    out.append([d.metadata["Name"], d.version, total])
print(json.dumps(out))
"""


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_CACHE"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def copy_current_tree(dest: Path) -> None:
    """The working tree as it is (tracked and untracked-not-ignored files), without build leftovers."""
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def install(
    python: str, source: Path, work: Path, tag: str, cache: Path, log: Path, extra: tuple[str, ...] = ()
) -> tuple[float, Path, float]:
    """A fresh venv and ``pip install .`` from a fresh copy of ``source``.

    Returns (pip seconds, the venv, MB pip fetched over the network: its "Downloading" lines)."""
    src = work / f"src-{tag}"
    venv = work / f"venv-{tag}"
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(venv, ignore_errors=True)
    shutil.copytree(source, src, ignore=shutil.ignore_patterns(".git"))
    subprocess.run([python, "-m", "venv", str(venv)], check=True, env=clean_env())
    cmd = [str(venv / "bin" / "pip"), "install", "--no-input", "--cache-dir", str(cache), *extra, "."]
    start = log.stat().st_size if log.exists() else 0
    with log.open("a") as out:
        out.write(f"\n### {tag}: {' '.join(cmd)}\n")
        out.flush()
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=src, check=True, stdout=out, stderr=subprocess.STDOUT, env=clean_env())
        seconds = time.perf_counter() - t0
    shutil.rmtree(src)
    with log.open() as f:
        f.seek(start)
        fetched = sum(
            float(m.group(1)) * {"kB": 1e-3, "MB": 1.0, "GB": 1e3}[m.group(2)]
            for m in re.finditer(r"^\s*Downloading \S+ \(([\d.]+) (kB|MB|GB)\)", f.read(), re.M)
        )
    print(f"  {tag}: {seconds:.1f} s, {fetched:.1f} MB fetched", file=sys.stderr)
    return seconds, venv, fetched


def fill_wheelhouse(python: str, source: Path, work: Path, wheelhouse: Path, cache: Path, log: Path) -> None:
    """Every wheel a bare install of ``source`` needs, and its build requirements, in ``wheelhouse`` (untimed)."""
    venv = work / "venv-download"
    src = work / "src-download"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(source, src, ignore=shutil.ignore_patterns(".git"))
    if not venv.exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True, env=clean_env())
    with (source / "pyproject.toml").open("rb") as f:
        build_requires = tomllib.load(f)["build-system"]["requires"]
    pip = [str(venv / "bin" / "pip"), "download", "--no-input", "--cache-dir", str(cache), "-d", str(wheelhouse)]
    with log.open("a") as out:
        for what in (["."], build_requires):
            out.write(f"\n### wheelhouse: {' '.join(pip + what)}\n")
            out.flush()
            subprocess.run(pip + what, cwd=src, check=True, stdout=out, stderr=subprocess.STDOUT, env=clean_env())
    shutil.rmtree(src)


def site_packages(venv: Path) -> Path:
    (sp,) = (venv / "lib").glob("python3*/site-packages")
    return sp


def du_bytes(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], check=True, capture_output=True, text=True).stdout.split()[0])


def dists(venv: Path) -> dict[str, tuple[str, int]]:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", DIST_SIZES], check=True, capture_output=True, text=True, env=clean_env()
    ).stdout
    return {name.lower().replace("_", "-"): (version, size) for name, version, size in json.loads(out)}


def help_seconds(venv: Path, cwd: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(venv / "bin" / "edge-runtime"), "--help"], cwd=cwd, capture_output=True, text=True, env=clean_env()
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or "usage" not in done.stdout.lower():
        raise SystemExit(f"edge-runtime --help failed in {venv}: {done.stderr.strip()[-500:]}")
    return seconds


def importtime(venv: Path, cwd: Path) -> tuple[dict[str, float], float]:
    """Per top-level package outside the project, its cumulative import time (ms); and the run's total."""
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-X", "importtime", str(venv / "bin" / "edge-runtime"), "--help"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    )
    # Lines come children first: "import time:  self | cumulative | <indent>name"; a line's parent is
    # the next line below it with less indentation.
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)", line)
        if m:
            rows.append((len(m.group(3)), m.group(4).split(".")[0], int(m.group(2)) / 1000))
    per_root: dict[str, float] = {}
    total = 0.0
    for i, (depth, root, cum) in enumerate(rows):
        if depth == 0:
            total += cum
        parent = next((r for d, r, _ in rows[i + 1 :] if d < depth), None)
        if parent != root and root not in OWN_PACKAGES:
            per_root[root] = per_root.get(root, 0.0) + cum
    return per_root, total


def security(unit_file: Path) -> tuple[float, dict[str, tuple[bool, str]]]:
    base = ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_file)]
    text = subprocess.run(base, capture_output=True, text=True).stdout
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", text)
    if not m:
        raise SystemExit(f"no exposure score from systemd-analyze for {unit_file}:\n{text[-1000:]}")
    items = json.loads(subprocess.run([*base, "--json=short"], capture_output=True, text=True).stdout)
    return float(m.group(1)), {it["name"]: (bool(it["set"]), it["exposure"] or "") for it in items}


def mark(verdict: tuple[bool, str] | None) -> str:
    """✓ when set; ✗ and the exposure it adds when not (partly set settings add less: IPAddressDeny=)."""
    if verdict is None:
        return "-"
    return "✓" if verdict[0] else f"✗ {verdict[1]}"


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def ratio(new: float, old: float) -> str:
    return f"{new / old:.2f}" if old else "-"


def mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="c4aafa1", help="the old side: a git rev (default: before the extras split)")
    parser.add_argument("--unit-rev", default="42cb290~1", help="the systemd unit before the hardening commit")
    parser.add_argument("--python", default="python3.11", help="interpreter for the venvs")
    parser.add_argument("--reps", type=int, default=3, help="installs per side and kind (from the index, offline)")
    parser.add_argument("--startup-runs", type=int, default=15, help="edge-runtime --help runs per side")
    parser.add_argument("--importtime-runs", type=int, default=3, help="python -X importtime runs per side")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (venvs, pip log)")
    args = parser.parse_args(argv)

    old_sha = git("rev-parse", "--short", args.rev).strip()
    new_sha = git("rev-parse", "--short", "HEAD").strip()
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    new_label = f"{new_sha}{' + uncommitted changes' if dirty else ''}"
    work = Path(tempfile.mkdtemp(prefix="footprint-"))
    log = work / "pip.log"
    old_src, new_src = work / "tree-old", work / "tree-new"
    git("worktree", "add", "--detach", str(old_src), args.rev)
    try:
        new_src.mkdir()
        copy_current_tree(new_src)
        sides = {"old": old_src, "new": new_src}
        warm = work / "cache-shared"
        wheelhouse = work / "wheelhouse"
        cold: dict[str, float] = {}
        fetched: dict[str, list[float]] = {"old": [], "new": []}
        print("installs (pip log: " + str(log) + ")", file=sys.stderr)
        for side in ("old", "new"):
            empty = work / f"cache-empty-{side}"
            cold[side], _, mb_fetched = install(args.python, sides[side], work, f"{side}-cold", empty, log)
            fetched[side].append(mb_fetched)
            shutil.copytree(empty, warm, dirs_exist_ok=True)  # the shared cache: the union of the two
            shutil.rmtree(empty)
        for side in ("old", "new"):
            fill_wheelhouse(args.python, sides[side], work, wheelhouse, warm, log)
        offline = ("--no-index", "--find-links", str(wheelhouse))
        times: dict[str, list[float]] = {"old": [], "new": []}
        times_offline: dict[str, list[float]] = {"old": [], "new": []}
        venvs: dict[str, Path] = {}
        for i in range(args.reps):
            order = ("old", "new") if i % 2 == 0 else ("new", "old")
            for side in order:
                seconds, venvs[side], mb_fetched = install(args.python, sides[side], work, side, warm, log)
                times[side].append(seconds)
                fetched[side].append(mb_fetched)
            for side in order:
                seconds, _, mb_fetched = install(args.python, sides[side], work, f"{side}-offline", warm, log, offline)
                assert mb_fetched == 0, "an offline install fetched something"
                times_offline[side].append(seconds)
        http_cached = sum(1 for d in warm.glob("http*") for f in d.rglob("*") if f.is_file())
        bare = work / "venv-bare"
        subprocess.run([args.python, "-m", "venv", str(bare)], check=True, env=clean_env())
        bare_size = du_bytes(site_packages(bare))
        sizes = {side: du_bytes(site_packages(venvs[side])) for side in sides}
        installed = {side: dists(venvs[side]) for side in sides}

        print("edge-runtime --help", file=sys.stderr)
        neutral = work  # not a source tree: nothing imports from the current directory
        for side in sides:
            help_seconds(venvs[side], neutral)
        startup: dict[str, list[float]] = {"old": [], "new": []}
        for i in range(args.startup_runs):
            for side in ("old", "new") if i % 2 == 0 else ("new", "old"):
                startup[side].append(help_seconds(venvs[side], neutral))
        imp: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        imp_total: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.importtime_runs):
            for side in sides:
                per, total = importtime(venvs[side], neutral)
                imp[side].append(per)
                imp_total[side].append(total)

        units = work / "units"
        scores = {}
        for side, rev in (("before", args.unit_rev), ("after", None)):
            (units / side).mkdir(parents=True)
            unit_file = units / side / Path(UNIT).name
            if rev is None:
                shutil.copy2(REPO / UNIT, unit_file)
            else:
                unit_file.write_text(git("show", f"{rev}:{UNIT}"))
            scores[side] = security(unit_file)
    finally:
        git("worktree", "remove", "--force", str(old_src))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    # ---- report ---------------------------------------------------------------------------------
    o, n = f"old: {old_sha} (`{args.rev}`)", f"new: {new_label}"
    p = print
    p(
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, "
        f"{subprocess.run([args.python, '--version'], capture_output=True, text=True).stdout.strip()}; "
        f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}.\n"
    )
    p(f"| bare `pip install .` and start-up | {o} | {n} | new/old |")
    p("|---|---:|---:|---:|")
    w = {s: med(times[s]) for s in sides}
    p(
        f"| install from the index, shared pip cache: median of {args.reps} (s) | {w['old']:.1f} | {w['new']:.1f} | "
        f"{ratio(w['new'], w['old'])} |"
    )
    p(
        f"| ... each run (s) | {', '.join(f'{x:.1f}' for x in times['old'])} | "
        f"{', '.join(f'{x:.1f}' for x in times['new'])} | |"
    )
    p(
        f"| install from the index, empty pip cache: 1 run, before the above (s) | {cold['old']:.1f} | "
        f"{cold['new']:.1f} | {ratio(cold['new'], cold['old'])} |"
    )
    f_med = {s: med(fetched[s]) for s in sides}
    p(
        f"| ... fetched over the network per install, median (MB) | {f_med['old']:.1f} | {f_med['new']:.1f} | "
        f"{ratio(f_med['new'], f_med['old'])} |"
    )
    wo = {s: med(times_offline[s]) for s in sides}
    p(
        f"| install offline from a wheelhouse (`--no-index`): median of {args.reps} (s) | {wo['old']:.1f} | "
        f"{wo['new']:.1f} | {ratio(wo['new'], wo['old'])} |"
    )
    p(
        f"| ... each run (s) | {', '.join(f'{x:.1f}' for x in times_offline['old'])} | "
        f"{', '.join(f'{x:.1f}' for x in times_offline['new'])} | |"
    )
    if not http_cached:
        p(
            "| ... (pip's HTTP cache stored nothing: this host's network answers without cache headers, so every "
            "install from the index fetched its files again) | | | |"
        )
    p(
        f"| site-packages (MB; a bare venv's is {mb(bare_size)}) | {mb(sizes['old'])} | {mb(sizes['new'])} | "
        f"{ratio(sizes['new'], sizes['old'])} |"
    )
    p(
        f"| ... minus the bare venv's (MB) | {mb(sizes['old'] - bare_size)} | {mb(sizes['new'] - bare_size)} | "
        f"{ratio(sizes['new'] - bare_size, sizes['old'] - bare_size)} |"
    )
    p(f"| distributions installed (pip, setuptools included) | {len(installed['old'])} | {len(installed['new'])} | |")
    s = {side: med(startup[side]) * 1000 for side in sides}
    p(
        f"| `edge-runtime --help`: median of {args.startup_runs} (ms) | {s['old']:.0f} | {s['new']:.0f} | "
        f"{ratio(s['new'], s['old'])} |"
    )
    for side in sides:
        xs = sorted(startup[side])
        startup[side] = xs
    p(
        f"| ... min..max (ms) | {startup['old'][0] * 1000:.0f}..{startup['old'][-1] * 1000:.0f} | "
        f"{startup['new'][0] * 1000:.0f}..{startup['new'][-1] * 1000:.0f} | |"
    )
    it = {side: med(imp_total[side]) for side in sides}
    p(
        f"| `-X importtime` total of top-level imports: median of {args.importtime_runs} (ms) | {it['old']:.0f} | "
        f"{it['new']:.0f} | {ratio(it['new'], it['old'])} |"
    )
    (b_score, b_items), (a_score, a_items) = scores["before"], scores["after"]
    p(
        f"| `systemd-analyze security --offline=yes` exposure (unit at `{args.unit_rev}` / current) | {b_score} | "
        f"{a_score} | |"
    )

    p(
        "\nInstalled distributions, largest first (size: the files in its RECORD; the project's own "
        "`akida-edge` included):\n"
    )
    p(f"| distribution | {o} | MB | {n} | MB |")
    p("|---|---|---:|---|---:|")
    names = sorted(
        set(installed["old"]) | set(installed["new"]),
        key=lambda k: -max(installed["old"].get(k, ("", 0))[1], installed["new"].get(k, ("", 0))[1]),
    )
    for name in names:
        cells = []
        for side in sides:
            if name in installed[side]:
                version, size = installed[side][name]
                cells += [version, mb(size)]
            else:
                cells += ["**absent**", "-"]
        p(f"| {name} | {' | '.join(cells)} |")
    gone = [k for k in names if k not in installed["new"]]
    gone_mb = sum(installed["old"][k][1] for k in gone)
    p(
        f"\nAbsent from the new base install: {', '.join(gone) or 'none'} ({mb(gone_mb)} MB in the old one). "
        f"New ones: {', '.join(k for k in names if k not in installed['old']) or 'none'}. "
        f"torch: {'installed' if 'torch' in installed['old'] else 'absent'} in the old base install, "
        f"{'installed' if 'torch' in installed['new'] else 'absent'} in the new."
    )

    p(
        "\n`python -X importtime edge-runtime --help`: the five packages outside the project (standard library "
        "included) with the largest cumulative "
        f"import time (ms, median of {args.importtime_runs}; a package's time includes what it imports first):\n"
    )
    top = {}
    for side in sides:
        roots = set().union(*imp[side])
        per = {r: med([run.get(r, 0.0) for run in imp[side]]) for r in roots}
        top[side] = sorted(per.items(), key=lambda kv: -kv[1])[:5]
    p(f"| # | {o} | ms | {n} | ms |")
    p("|---:|---|---:|---|---:|")
    for i in range(5):
        cells = []
        for side in sides:
            cells += [f"`{top[side][i][0]}`", f"{top[side][i][1]:.0f}"] if i < len(top[side]) else ["", ""]
        p(f"| {i + 1} | {' | '.join(cells)} |")

    p(
        f"\n`systemd-analyze security --offline=yes`: settings whose verdict differs between `{args.unit_rev}` "
        "and the current unit:\n"
    )
    p("| setting | before | after |")
    p("|---|---|---|")
    for name in sorted(set(b_items) | set(a_items)):
        b, a = b_items.get(name), a_items.get(name)
        if b != a:
            p(f"| `{name}` | {mark(b)} | {mark(a)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
