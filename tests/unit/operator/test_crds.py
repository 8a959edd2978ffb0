"""The committed CRDs match the API types, and the schemas are structural."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from loraplane.operator.api import crdgen
from loraplane.operator.api.adapter_types import AdapterSpec
from loraplane.operator.api.basemodel_types import BaseModelSpec
from loraplane.operator.api.workerpool_types import WorkerPoolSpec

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "docs" / "examples"


def test_committed_crds_are_not_stale():
    bad = crdgen.stale(ROOT / "crds")
    assert not bad, f"crds/ is stale, run `python -m loraplane.operator.api.crdgen`: {bad}"


def test_stale_detects_an_edit(tmp_path):
    crdgen.write(tmp_path)
    assert crdgen.stale(tmp_path) == []
    f = next(tmp_path.iterdir())
    f.write_text(f.read_text().replace("minimum: 0", "minimum: 1", 1))
    assert crdgen.stale(tmp_path) == [f.name]


def _walk(node, path="$"):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


@pytest.mark.parametrize("name", sorted(crdgen.render_all()))
def test_schema_is_structural(name):
    doc = yaml.safe_load(crdgen.render_all()[name])
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if isinstance(node, dict) and not path.endswith(".properties"):
            assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
            if "properties" in node:
                assert "additionalProperties" not in node, path
                assert node.get("type") == "object", path
    names = doc["spec"]["names"]
    assert names["categories"] == ["loraplane"]
    assert doc["spec"]["versions"][0]["subresources"]["status"] == {}


def test_workerpool_scale_subresource():
    doc = yaml.safe_load(crdgen.render_all()["loraplane.io_workerpools.yaml"])
    scale = doc["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                     "labelSelectorPath": ".status.selector"}
    assert doc["spec"]["names"]["shortNames"] == ["wp"]


def _examples():
    for f in sorted(EXAMPLES.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                yield d


MODELS = {"BaseModel": BaseModelSpec, "Adapter": AdapterSpec, "WorkerPool": WorkerPoolSpec}


def test_examples_parse_with_the_api_types():
    kinds = [d["kind"] for d in _examples()]
    assert {"BaseModel", "Adapter", "WorkerPool"} <= set(kinds)
    for d in _examples():
        MODELS[d["kind"]].model_validate(d["spec"])


def test_examples_cover_every_seed_agent():
    tasks = {d["spec"]["task"] for d in _examples() if d["kind"] == "Adapter"}
    assert tasks >= {"synthesizer", "re_ranker", "fact_checker", "critic", "journalist", "chief_editor",
                     "reasoning", "analyst"}
    pools = [d for d in _examples() if d["kind"] == "WorkerPool"]
    adapters = {d["metadata"]["name"] for d in _examples() if d["kind"] == "Adapter"}
    for p in pools:
        for backends in p["spec"]["routes"].values():
            assert {b["adapter"] for b in backends} <= adapters


def test_pydantic_refuses_what_the_schema_refuses():
    with pytest.raises(ValidationError):
        WorkerPoolSpec.model_validate({"baseModelRef": "m", "replicas": -1})
    with pytest.raises(ValidationError):
        WorkerPoolSpec.model_validate({"baseModelRef": "m", "variants": ["int3"]})
    with pytest.raises(ValidationError):
        WorkerPoolSpec.model_validate({"baseModelRef": "m", "routes": {"t": [{"adapter": "a", "weight": 101}]}})
