"""Desired document, variant fallback rules, fault parsing, file source, reporter body."""

import asyncio
import json

import pytest
from pydantic import ValidationError

from loraplane.contracts.desired import STATUS_ANNOTATION, DesiredState, WorkerStatus, desired_configmap_name
from loraplane.worker.loader import bnb_problem, plan_variant
from loraplane.worker.runtime import parse_faults
from loraplane.worker.sources import FileSource, PodReporter

DOC = {
    "pool": "p", "generation": 3,
    "base": {"owner": "o", "name": "mistral", "version": "v0.3", "checksum": "ab", "variant": "bnb-int8"},
    "adapters": [{"name": "synth-v1", "owner": "o", "storeName": "synth", "version": "v1", "checksum": "c1", "task": "synthesizer"},
                 {"name": "synth-v2", "owner": "o", "storeName": "synth", "version": "v2", "checksum": "c2", "task": "synthesizer"}],
    "routes": {"synthesizer": [{"adapter": "synth-v1", "weight": 95}, {"adapter": "synth-v2", "weight": 5}]},
}


def test_desired_round_trip_and_validation():
    d = DesiredState.model_validate(DOC)
    again = DesiredState.from_json(d.to_json())
    assert again == d and json.loads(d.to_json())["adapters"][0]["storeName"] == "synth"
    bad = json.loads(json.dumps(DOC))
    bad["routes"]["synthesizer"].append({"adapter": "ghost", "weight": 1})
    with pytest.raises(ValidationError, match="ghost"):
        DesiredState.model_validate(bad)
    bad = json.loads(json.dumps(DOC))
    bad["base"]["variant"] = "int3"
    with pytest.raises(ValidationError):
        DesiredState.model_validate(bad)
    assert desired_configmap_name("pool-a") == "pool-a-desired"


def test_status_annotation_round_trip():
    st = WorkerStatus(variant="fp16", loaded=["a"], failed={"b": "corrupt"}, ready=True, generation=2)
    assert WorkerStatus.from_annotation(st.to_annotation()) == st
    body = PodReporter.body(st)
    assert json.loads(body["metadata"]["annotations"][STATUS_ANNOTATION])["failed"] == {"b": "corrupt"}
    assert not PodReporter(pod="").enabled


@pytest.mark.parametrize("req,dev,bnb,want,why", [
    ("bnb-int8", "cuda", None, "bnb-int8", False),
    ("bnb-int8", "cuda", "BNB_DISABLE is set", "fp16", True),
    ("bnb-4bit", "cuda", "import failed", "fp16", True),
    ("fp16", "cuda", "whatever", "fp16", False),
    ("bf16", "cuda", None, "bf16", False),
    ("fp16", "cpu", None, "fp32", True),
    ("bnb-int8", "cpu", None, "fp32", True),
    ("bf16", "cpu", None, "bf16", False),
])
def test_variant_plan(req, dev, bnb, want, why):
    p = plan_variant(req, dev, bnb)
    assert p.variant == want and (p.reason is not None) == why


def test_bnb_disable_env():
    assert bnb_problem({"BNB_DISABLE": "1"}) == "BNB_DISABLE is set"


def test_parse_faults():
    assert parse_faults("synth-v2=250, synth-v1=0") == {"synth-v2": 250.0, "synth-v1": 0.0}
    assert parse_faults(None) == {}
    with pytest.raises(ValueError):
        parse_faults("oops")


def test_file_source_applies_on_change_and_skips_bad(tmp_path):
    seen = []

    async def apply(doc):
        seen.append(doc.generation)

    f = tmp_path / "desired.json"
    src = FileSource(f, apply)

    async def go():
        assert not await src.check_once()  # missing file
        f.write_text(json.dumps(DOC))
        assert await src.check_once()
        assert not await src.check_once()  # unchanged
        f.write_text("{not json")
        assert not await src.check_once()  # bad document keeps the last good state
        f.write_text(json.dumps(DOC | {"generation": 4}) + " ")
        assert await src.check_once()
    asyncio.run(go())
    assert seen == [3, 4]


def test_status_reports_the_advertised_endpoint(monkeypatch):
    """A host process standing in for a KWOK pod advertises where it listens
    (the fake pod IP cannot be dialled); the operator scrapes that URL."""
    from loraplane.worker.runtime import Worker, WorkerConfig

    monkeypatch.setenv("LORAPLANE_ADVERTISE_URL", "http://127.0.0.1:4321")
    assert Worker(WorkerConfig(store_root="/nonexistent", device="cpu")).status().endpoint == "http://127.0.0.1:4321"
    monkeypatch.delenv("LORAPLANE_ADVERTISE_URL")
    st = Worker(WorkerConfig(store_root="/nonexistent", device="cpu")).status()
    assert st.endpoint is None
    assert WorkerStatus.from_annotation(st.to_annotation()).endpoint is None
