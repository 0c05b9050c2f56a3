"""A payload file the manifest does not list is refused, even when everything else about the bundle is fine.

The loader reads model.fbz, golden.npz and model.onnx by their fixed names, not by the manifest's
list, so a bundle whose manifest drops an entry would otherwise load with that file unchecked: any
bytes could sit there. Each case removes one entry and reseals the manifest, so the missing entry is
the only thing wrong.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from bundle_fixtures import make_bundle

from edge_runtime.bundle import load_bundle
from edge_runtime.errors import BundleError
from edge_runtime.manifest import MANIFEST, PAYLOAD_FILES, seal


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, mnist_data) -> Path:
    out = tmp_path_factory.mktemp("listing") / "good"
    make_bundle(out, np.random.default_rng(5), mnist_data.test_images[:100, ..., None], mnist_data.test_labels[:100])
    return out


@pytest.mark.parametrize("name", PAYLOAD_FILES)
def test_a_payload_file_missing_from_the_manifest_is_refused(tmp_path: Path, exported: Path, name: str) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(exported, bundle)
    load_bundle(bundle)  # the copy is good as it is
    document = json.loads((bundle / MANIFEST).read_text())
    del document["files"][name]
    (bundle / MANIFEST).write_text(json.dumps(seal(document), indent=2))
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle)
    message = str(caught.value)
    assert f"{name} is not listed in the manifest" in message and "\n" not in message
    assert message.endswith("re-copy the bundle or re-export it")
