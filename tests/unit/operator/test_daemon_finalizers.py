"""kopf's daemons would block namespace deletion once the operator is gone;
loraplane registers its daemons without a finalizer (operator/controllers/daemon_finalizers.py)."""

from __future__ import annotations

import kopf

from loraplane.operator.controllers.daemon_finalizers import drop_daemon_finalizers


def _daemons(registry):
    return [h for h in registry._spawning.get_all_handlers() if type(h).__name__ == "DaemonHandler"]


def test_kopf_still_puts_a_finalizer_on_daemons_so_the_override_is_needed():
    registry = kopf.OperatorRegistry()

    @kopf.daemon("loraplane.io", "v1alpha1", "workerpools", registry=registry)
    def run(**_):  # pragma: no cover - never spawned
        pass

    assert [h.requires_finalizer for h in _daemons(registry)] == [True]


def test_drop_clears_the_requirement_on_daemons_only():
    registry = kopf.OperatorRegistry()

    @kopf.daemon("loraplane.io", "v1alpha1", "workerpools", registry=registry)
    def run(**_):  # pragma: no cover
        pass

    @kopf.on.delete("loraplane.io", "v1alpha1", "adapters", registry=registry)
    def gone(**_):  # pragma: no cover
        pass

    assert drop_daemon_finalizers(registry) == 1
    assert [h.requires_finalizer for h in _daemons(registry)] == [False]
    assert drop_daemon_finalizers(registry) == 0  # idempotent
    # A real on-delete handler keeps its finalizer: it is not ours to drop.
    assert all(h.requires_finalizer for h in registry._changing.get_all_handlers())


def test_the_operators_own_daemons_need_no_finalizer():
    from loraplane.operator.controllers import handlers  # noqa: F401 - registers the daemons on the default registry

    registry = kopf.get_default_registry()
    drop_daemon_finalizers(registry)
    daemons = _daemons(registry)
    assert {h.selector.any_name for h in daemons} >= {"workerpools", "basemodels", "adapters"}
    assert not [h for h in daemons if h.requires_finalizer]
