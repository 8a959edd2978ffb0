"""Thin I/O helpers over the kubernetes client: raw dicts in and out
(``_preload_content=False``: no model round-trip, and the pure cores take
the same dicts the API returns), idempotent create/delete, server-side apply
with the operator's field manager, core/v1 Events."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from ..api.common_types import GROUP, VERSION
from ..api.names import FIELD_MANAGER

PLURALS = {"BaseModel": "basemodels", "Adapter": "adapters", "WorkerPool": "workerpools"}


class Kube:
    def __init__(self, kubeconfig: str | None):
        if kubeconfig:
            self.api = config.new_client_from_config(config_file=kubeconfig)
        else:
            config.load_incluster_config()
            self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)

    @staticmethod
    def _json(resp) -> dict:
        return json.loads(resp.data)

    # --- reads -----------------------------------------------------------
    def get_custom(self, kind: str, ns: str, name: str) -> dict | None:
        try:
            return self._json(self.custom.get_namespaced_custom_object(
                GROUP, VERSION, ns, PLURALS[kind], name, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list_custom(self, kind: str, ns: str) -> list[dict]:
        return self._json(self.custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, PLURALS[kind], _preload_content=False))["items"]

    def list_pods(self, ns: str | None = None, selector: str | None = None) -> list[dict]:
        kw = {"label_selector": selector} if selector else {}
        if ns:
            r = self.core.list_namespaced_pod(ns, _preload_content=False, **kw)
        else:
            r = self.core.list_pod_for_all_namespaces(_preload_content=False, **kw)
        return self._json(r)["items"]

    def list_nodes(self) -> list[dict]:
        return self._json(self.core.list_node(_preload_content=False))["items"]

    def list_jobs(self, ns: str, selector: str) -> list[dict]:
        return self._json(self.batch.list_namespaced_job(ns, label_selector=selector,
                                                         _preload_content=False))["items"]

    def namespace_terminating(self, ns: str) -> bool:
        """Is ``ns`` being deleted (or gone)? The API server refuses new objects there."""
        try:
            got = self._json(self.core.read_namespace(ns, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return True
            raise
        return bool(got["metadata"].get("deletionTimestamp")) or (got.get("status") or {}).get("phase") == "Terminating"

    def secret_key_present(self, ns: str, name: str, key: str) -> str | None:
        """None when present, else why not. The value is never returned or logged.
        The chart grants ``get`` only on the Secrets listed in ``hubTokenSecrets``
        (a Role per namespace, by name): any other is refused, and said so."""
        try:
            s = self.core.read_namespaced_secret(name, ns)
        except ApiException as e:
            if e.status == 404:
                return f"Secret {name} not found in namespace {ns}"
            if e.status == 403:
                return (f"the operator may not read Secret {name} in namespace {ns}: list it in the chart value "
                        f"hubTokenSecrets (namespace {ns}, name {name})")
            raise
        return None if key in (s.data or {}) else f"Secret {name} has no key {key!r}"

    # --- writes ----------------------------------------------------------
    def create(self, obj: dict) -> dict | None:
        """Create and return the stored object; None when it already exists
        (a repeated reconcile)."""
        ns = obj["metadata"]["namespace"]
        try:
            if obj["kind"] == "Pod":
                r = self.core.create_namespaced_pod(ns, obj, field_manager=FIELD_MANAGER, _preload_content=False)
            elif obj["kind"] == "Job":
                r = self.batch.create_namespaced_job(ns, obj, field_manager=FIELD_MANAGER, _preload_content=False)
            else:
                raise ValueError(obj["kind"])
            return self._json(r)
        except ApiException as e:
            if e.status == 409:
                return None
            raise

    def delete_pod(self, ns: str, name: str, force: bool = False) -> None:
        """``force``: grace period 0, for a pod bound to a node that is gone (no kubelet will
        ever confirm a graceful deletion, and the pod would stay Terminating)."""
        try:
            self.core.delete_namespaced_pod(name, ns, **({"grace_period_seconds": 0} if force else {}))
        except ApiException as e:
            if e.status != 404:
                raise

    def apply(self, obj: dict) -> None:
        """Server-side apply: idempotent, and the operator owns exactly the
        fields it sets (others may add labels/annotations)."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        kw = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": "application/apply-patch+yaml"}
        if obj["kind"] == "ConfigMap":
            self.core.patch_namespaced_config_map(name, ns, obj, **kw)
        elif obj["kind"] == "Service":
            self.core.patch_namespaced_service(name, ns, obj, **kw)
        elif obj["kind"] == "ServiceAccount":
            self.core.patch_namespaced_service_account(name, ns, obj, **kw)
        elif obj["kind"] == "RoleBinding":
            self.rbac.patch_namespaced_role_binding(name, ns, obj, **kw)
        else:
            raise ValueError(obj["kind"])

    def patch_status(self, kind: str, ns: str, name: str, status: dict) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, ns, PLURALS[kind], name, {"status": status},
                _content_type="application/merge-patch+json")
        except ApiException as e:
            if e.status != 404:
                raise

    def remove_annotations(self, kind: str, ns: str, name: str, keys: list[str]) -> None:
        """Merge patch deleting ``keys`` only: annotations added meanwhile are untouched."""
        try:
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, ns, PLURALS[kind], name, {"metadata": {"annotations": {k: None for k in keys}}},
                _content_type="application/merge-patch+json")
        except ApiException as e:
            if e.status != 404:
                raise

    def event(self, obj: dict, type_: str, reason: str, message: str) -> None:
        """Post an Event, deduplicated as kubelets and controllers do: one Event
        object per (object, type, reason, message), named by their hash, whose
        ``lastTimestamp`` moves when the same thing happens again (in a later
        pass, or after a restart) instead of a new Event each time."""
        meta = obj["metadata"]
        ns, message = meta["namespace"], message[:1024]
        key = "\0".join((meta.get("uid") or meta["name"], type_, reason, message))
        name = f"{meta['name'][:200]}.{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                               "namespace": ns, "uid": meta.get("uid")},
            "type": type_, "reason": reason, "message": message,
            "source": {"component": "loraplane-operator"},
            "firstTimestamp": now, "lastTimestamp": now,
            "count": 1, "reportingComponent": "loraplane-operator", "reportingInstance": "loraplane-operator",
        }
        try:
            self.core.create_namespaced_event(ns, body)
        except ApiException as e:
            if e.status == 409:
                self._repeat_event(ns, name, now)
            # anything else: events are best effort (a terminating namespace refuses them)

    def _repeat_event(self, ns: str, name: str, now: str) -> None:
        """The same Event again: only its ``lastTimestamp`` moves (the chart's
        RBAC grants create and patch on Events, not get, so ``count`` stays)."""
        try:
            self.core.patch_namespaced_event(name, ns, {"lastTimestamp": now})
        except ApiException:
            pass
