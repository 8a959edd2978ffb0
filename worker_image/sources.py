"""Where the desired document comes from, and where the status goes.

* ``FileSource``: a JSON file polled by mtime (local runs, tests).
* ``ConfigMapSource``: a Kubernetes watch on the ``<pool>-desired``
  ConfigMap (``LORAPLANE_DESIRED_CONFIGMAP=<ns>/<name>``); the watch is
  re-established after errors and 410 Gone, so an API server restart only
  delays updates.
* ``PodReporter``: patches this worker's Pod annotation
  ``loraplane.io/worker-status`` (POD_NAME/POD_NAMESPACE from the downward
  API); the operator folds it into WorkerPool status.

Why keep these thin: everything they feed (``Worker.apply``) is tested
without a cluster; these only move bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import Awaitable, Callable

from pydantic import ValidationError

from loraplane.contracts.desired import DESIRED_KEY, STATUS_ANNOTATION, DesiredState, WorkerStatus

log = logging.getLogger(__name__)

Apply = Callable[[DesiredState], Awaitable[object]]


def parse_document(text: str | bytes, origin: str) -> DesiredState | None:
    """Parse, logging (not raising) a bad document: the worker keeps its last good state."""
    try:
        return DesiredState.from_json(text)
    except (ValidationError, ValueError) as e:
        log.error("desired state from %s is invalid, keeping the previous one: %s", origin, e)
        return None


class FileSource:
    def __init__(self, path: str | Path, apply: Apply, poll_s: float = 1.0):
        self.path, self.apply, self.poll_s = Path(path), apply, poll_s
        self._seen: tuple[float, int] | None = None

    async def check_once(self) -> bool:
        """Apply the file if it changed since last time; True when applied."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return False
        key = (st.st_mtime, st.st_size)
        if key == self._seen:
            return False
        self._seen = key
        doc = parse_document(self.path.read_bytes(), str(self.path))
        if doc is None:
            return False
        await self.apply(doc)
        return True

    async def run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # noqa: BLE001 - keep polling
                log.exception("applying %s failed", self.path)
            await asyncio.sleep(self.poll_s)


def _k8s_core():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CoreV1Api()


class ConfigMapSource:
    def __init__(self, ref: str, apply: Apply, loop: asyncio.AbstractEventLoop):
        ns, sep, name = ref.partition("/")
        if not sep or not ns or not name:
            raise ValueError(f"configmap reference {ref!r} must be <namespace>/<name>")
        self.ns, self.name, self.apply, self.loop = ns, name, apply, loop
        self._stop = threading.Event()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._watch_forever, name="desired-watch", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()

    def _handle(self, cm) -> None:
        data = (cm.data or {}).get(DESIRED_KEY)
        if data is None:
            log.error("configmap %s/%s has no %s key", self.ns, self.name, DESIRED_KEY)
            return
        doc = parse_document(data, f"configmap {self.ns}/{self.name}")
        if doc is not None:
            asyncio.run_coroutine_threadsafe(self.apply(doc), self.loop).result()

    def _watch_forever(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        api = None
        while not self._stop.is_set():
            try:
                api = api or _k8s_core()
                lst = api.list_namespaced_config_map(self.ns, field_selector=f"metadata.name={self.name}")
                for cm in lst.items:
                    self._handle(cm)
                w = watch.Watch()
                for ev in w.stream(api.list_namespaced_config_map, self.ns,
                                   field_selector=f"metadata.name={self.name}",
                                   resource_version=lst.metadata.resource_version, timeout_seconds=300):
                    if self._stop.is_set():
                        w.stop()
                        break
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._handle(ev["object"])
            except ApiException as e:
                log.warning("configmap watch: %s (re-listing)", e.reason)
                self._stop.wait(1.0 if e.status == 410 else 3.0)
            except Exception as e:  # noqa: BLE001 - never let the watch thread die
                log.warning("configmap watch error: %s", e)
                api = None
                self._stop.wait(3.0)


class PodReporter:
    """Patch the status annotation on our Pod; a no-op without POD_NAME."""

    def __init__(self, pod: str | None = None, namespace: str | None = None):
        self.pod = pod if pod is not None else os.environ.get("POD_NAME")
        self.namespace = namespace or os.environ.get("POD_NAMESPACE", "default")
        self._api = None

    @property
    def enabled(self) -> bool:
        return bool(self.pod)

    @staticmethod
    def body(status: WorkerStatus) -> dict:
        return {"metadata": {"annotations": {STATUS_ANNOTATION: status.to_annotation()}}}

    async def __call__(self, status: WorkerStatus) -> None:
        if not self.enabled:
            return
        await asyncio.get_running_loop().run_in_executor(None, self._patch, status)

    def _patch(self, status: WorkerStatus) -> None:
        if self._api is None:
            self._api = _k8s_core()
        self._api.patch_namespaced_pod(self.pod, self.namespace, self.body(status))
