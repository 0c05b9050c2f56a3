"""``edge-export sweep``: train a grid over penalty weights and tabulate the accuracy/energy Pareto front.

Every point is a full ``train`` run (its own run directory), plus one baseline with all penalties and
pruning off, so each front is read against a model trained the same way without the zero-aware terms;
``--seeds N`` trains every point (the baseline too) with N seeds. The runs go one after another, in
``--jobs N`` local worker processes, or as tasks on a Ray cluster (``--ray ADDRESS``, the ``ray``
extra, imported only then); every run is deterministic for its seed and thread count, so the table
is the same whichever way they ran.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import multiprocessing
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import IO, Any

from edge_runtime import files
from edge_runtime.errors import ConfigError, EdgeError
from edge_runtime.tomlconfig import parse_toml_value

from .config import Config, load_config, with_overrides
from .train_cli import parse_overrides

log = logging.getLogger(__name__)

BASELINE = (("penalty.activations", 0.0), ("penalty.weights", 0.0), ("prune.sparsity", 0.0))
COLUMNS = (
    "name",
    "accuracy",
    "activations_nonzero_per_image",
    "weights_nonzero",
    "synops_per_image",
    "total_uj_per_image",
    "dynamic_uj_per_image",
    "pareto",
)
PARETO_DEVICE = "akd1000"  # the front is drawn against modelled total energy on this device


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sweep",
        help="train a grid over penalty weights; write a Pareto table and plot",
        description="Train one model per point of the grid (the product of every --grid axis) plus a baseline "
        "without penalties or pruning; write pareto.csv, pareto.md and pareto.png (accuracy vs modelled "
        "energy per image) to DIR, with each run in DIR/runs/NAME.",
    )
    parser.add_argument("--config", type=Path, required=True, help="base TOML config")
    parser.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="SECTION.KEY=V1,V2,...",
        help="one axis of the grid (repeatable), e.g. --grid penalty.activations=1,4,16",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a base config value for every point (repeatable)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train N points at once, in worker processes (each with train.threads torch threads); "
        "results do not depend on N (default 1)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="train every point (the baseline too) with N seeds, train.seed, train.seed + 1, ...; "
        "with N > 1 each run's name ends in -seed=S (default 1)",
    )
    parser.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run the points as tasks on a Ray cluster instead (each on train.threads CPUs): 'auto' for the "
        "cluster this host belongs to ('ray start'), HOST:6379, ray://HOST:10001, or 'local' for a "
        "one-machine instance; needs the ray extra on this host and every node (docs/training.md)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_sweep)


def parse_grid(axes: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """``key=v1,v2`` strings -> [(key, [values])], values parsed with TOML's rules."""
    grid = []
    for axis in axes:
        key, sep, values = axis.partition("=")
        if not sep or not values:
            raise ConfigError(f"--grid {axis!r}: expected SECTION.KEY=V1,V2,...")
        grid.append((key.strip(), [parse_toml_value(v.strip()) for v in values.split(",")]))
    return grid


def grid_points(base: Config, grid: Sequence[tuple[str, list[Any]]], seeds: int = 1) -> list[tuple[str, Config]]:
    """(name, config) for the baseline and each grid point, each with ``seeds`` seeds from
    ``train.seed`` on (named ``...-seed=S`` when more than one); every config is validated before
    training."""
    points = [("baseline", with_overrides(base, BASELINE, "baseline"))]
    keys = [key for key, _ in grid]
    for values in itertools.product(*(vals for _, vals in grid)):
        overrides = list(zip(keys, values, strict=True))
        name = "-".join(f"{key.split('.')[-1]}={value}" for key, value in overrides)
        points.append((name, with_overrides(base, overrides, f"--grid {name}")))
    if seeds == 1:
        return points
    return [
        (f"{name}-seed={seed}", with_overrides(config, [("train.seed", seed)], f"--seeds {name}"))
        for name, config in points
        for seed in range(config.train.seed, config.train.seed + seeds)
    ]


def is_baseline(name: str) -> bool:
    return name == "baseline" or name.startswith("baseline-seed=")


def row(name: str, report: dict[str, Any]) -> dict[str, Any]:
    energy = (report.get("energy") or {}).get(PARETO_DEVICE)
    return {
        "name": name,
        "accuracy": report["accuracy"],
        "activations_nonzero_per_image": report["activations_nonzero_per_image"],
        "weights_nonzero": report["weights_nonzero"],
        "synops_per_image": report["synops_per_image"],
        "total_uj_per_image": energy["total_j_per_image"] * 1e6 if energy else None,
        "dynamic_uj_per_image": energy["dynamic_j_per_image"] * 1e6 if energy else None,
    }


def cost_of(r: dict[str, Any]) -> float:
    """Modelled total energy (AKD1000, model v2) when an energy model was available, else synaptic ops."""
    return r["total_uj_per_image"] if r["total_uj_per_image"] is not None else r["synops_per_image"]


def mark_pareto(
    rows: list[dict[str, Any]], cost: Callable[[dict[str, Any]], float] = cost_of, flag: str = "pareto"
) -> list[dict[str, Any]]:
    """Set ``row[flag]`` on rows that no other row beats on both accuracy (higher) and ``cost`` (lower)."""
    for r in rows:
        r[flag] = not any(
            o is not r
            and o["accuracy"] >= r["accuracy"]
            and cost(o) <= cost(r)
            and (o["accuracy"] > r["accuracy"] or cost(o) < cost(r))
            for o in rows
        )
    return rows


def write_tables(rows: list[dict[str, Any]], out: Path) -> None:
    with open(out / "pareto.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}" if value < 1 else f"{value:,.1f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in sorted(rows, key=cost_of)]
    (out / "pareto.md").write_text("\n".join(lines) + "\n")


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Accuracy vs modelled energy per image; the baseline as a red star, the front joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = (
        f"modelled total energy per image on {PARETO_DEVICE.upper()} (µJ, model v2)"
        if rows[0]["total_uj_per_image"] is not None
        else "synops per image"
    )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        baseline = is_baseline(r["name"])
        ax.scatter(
            cost_of(r),
            100 * r["accuracy"],
            marker="*" if baseline else "o",
            s=160 if baseline else 30,
            color="tab:red" if baseline else ("tab:blue" if r["pareto"] else "tab:gray"),
            zorder=3,
        )
        ax.annotate(r["name"], (cost_of(r), 100 * r["accuracy"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = sorted((r for r in rows if r["pareto"]), key=cost_of)
    ax.plot([cost_of(r) for r in front], [100 * r["accuracy"] for r in front], color="tab:blue", lw=1)
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%), exported integer model")
    ax.set_title("Zero-aware training sweep (red star: baseline)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)


def _train_point(name: str, config: Config, out: Path, progress: bool) -> tuple[str, dict[str, Any]]:
    """One grid point (module-level so a worker process can run it)."""
    from .train import train

    _, report = train(config, out / "runs" / name, progress=progress)
    return name, report


def _ray_train_point(name: str, config: Config) -> tuple[str, dict[str, Any], dict[str, bytes]]:
    """One grid point as a Ray task: trained in a temporary directory on whichever node runs it (the
    nodes of a cluster need not share a file system), returned with the run directory's files.

    Its epoch lines are logged; Ray forwards them to the driver with the task's name (``sweep:NAME``)
    in front, which is the per-run progress (tqdm bars do not survive that forwarding)."""
    from .train import train

    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    with tempfile.TemporaryDirectory(prefix="edge-sweep-") as tmp:
        run = Path(tmp) / name
        _, report = train(config, run, progress=False)
        payload = {path.name: path.read_bytes() for path in sorted(run.iterdir()) if path.is_file()}
    return name, report, payload


def _write_run(run: Path, payload: dict[str, bytes]) -> None:
    """A run directory from a Ray task's files (each written atomically)."""
    run.mkdir(parents=True, exist_ok=True)
    for filename, data in payload.items():
        files.atomic_write(run / filename, _writer(data))


def _writer(data: bytes) -> Callable[[IO[bytes]], object]:
    return lambda handle: handle.write(data)


def _on_ray(points: Sequence[tuple[str, Config]], out: Path, progress: bool, address: str) -> dict[str, dict]:
    """Every point as a Ray task on the cluster at ``address`` (or the one this process is connected
    to already); each run directory is written under ``out/runs`` as its task completes."""
    import ray  # the ray extra: without it the CLI names the extra (exporter.cli.EXTRAS)
    from tqdm import tqdm

    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=address)
    try:
        task = ray.remote(_ray_train_point)
        pending = {
            task.options(num_cpus=config.train.threads, name=f"sweep:{name}").remote(name, config): name
            for name, config in points
        }
        reports: dict[str, dict] = {}
        with tqdm(total=len(pending), desc="sweep (ray)", disable=not progress) as bar:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                name = pending.pop(ref)
                try:
                    _, report, payload = ray.get(ref)
                except ray.exceptions.RayTaskError as error:
                    for other in pending:
                        ray.cancel(other)
                    if isinstance(error.cause, EdgeError):  # a user error (config, data) stays one line
                        raise type(error.cause)(f"sweep point {name}: {error.cause}") from None
                    raise
                _write_run(out / "runs" / name, payload)
                reports[name] = report
                bar.update(1)
                energy = row(name, report)["total_uj_per_image"]
                cost = "" if energy is None else f", {energy:,.1f} µJ/image on {PARETO_DEVICE.upper()}"
                bar.write(f"{name}: accuracy {report['accuracy']:.4f}{cost} ({len(reports)}/{len(points)} done)")
    finally:
        if connected_here:
            ray.shutdown()
    return reports


def run_sweep(
    base: Config,
    grid: Sequence[tuple[str, list[Any]]],
    out: Path,
    progress: bool = True,
    jobs: int = 1,
    seeds: int = 1,
    ray_address: str | None = None,
) -> list[dict]:
    """Train every point (validated up front), then write the tables and the plot.

    ``jobs`` > 1 trains that many points at once in worker processes. Why processes: each run uses
    ``train.threads`` torch threads (1 in the shipped configs, for determinism), so on a 2-core host a
    sequential sweep leaves a core idle; every run is deterministic for its seed and thread count, so
    the table does not depend on ``jobs`` (tested). ``ray_address`` runs them on a Ray cluster
    instead (:func:`_on_ray`), with the same table (tested).
    """
    points = grid_points(base, grid, seeds)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if ray_address is not None:
        reports = _on_ray(points, out, progress, ray_address)
    elif jobs <= 1:
        reports = {}
        for index, (name, config) in enumerate(points, 1):
            log.info("sweep point %d/%d: %s", index, len(points), name)
            reports[name] = _train_point(name, config, out, progress)[1]
    else:
        from tqdm import tqdm  # the train extra, like everything a sweep runs

        # "spawn": a fresh interpreter per worker, not a fork of one that may hold torch's threads.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [pool.submit(_train_point, name, config, out, False) for name, config in points]
            bar = tqdm(as_completed(futures), total=len(futures), desc=f"sweep ({jobs} jobs)", disable=not progress)
            reports = dict(future.result() for future in bar)
    rows = [row(name, reports[name]) for name, _ in points]
    mark_pareto(rows)
    write_tables(rows, out)
    plot(rows, out)
    return rows


def _sweep(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    base = with_overrides(load_config(args.config), parse_overrides(args.set), str(args.config))
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    if args.ray is not None and args.jobs > 1:
        raise ConfigError("--ray and --jobs exclude each other: Ray schedules the points (each on train.threads CPUs)")
    rows = run_sweep(
        base,
        parse_grid(args.grid),
        args.out,
        progress=not args.no_progress,
        jobs=args.jobs,
        seeds=args.seeds,
        ray_address=args.ray,
    )
    print(f"{len(rows)} runs; table {args.out / 'pareto.md'}, plot {args.out / 'pareto.png'}")
    return 0
