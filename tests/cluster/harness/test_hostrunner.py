"""The host runner gives KWOK pods a real process with the pod's identity:
env from the downward API, hostPath volumes, a reachable port, and the
process's exit code and termination log reported back as the pod's status."""

from __future__ import annotations

import json
import urllib.request

from loraplane.devcluster.hostrunner import HostRunner
from loraplane.devcluster.waiting import wait_for


def job(namespace, name, script, store):
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": {"hostrun": "yes"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main", "image": "x", "command": ["sh", "-c", script],
                    "env": [{"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "STORE", "value": "/store/data"}],
                    "volumeMounts": [{"name": "store", "mountPath": "/store"}],
                }],
                "volumes": [{"name": "store", "hostPath": {"path": str(store)}}],
            },
        }},
    }


def test_jobs_run_on_the_host_and_report_their_result(dev_cluster, namespace, tmp_path):
    dev_cluster.create_gpu_nodes(1, prefix="hostrun")
    store = tmp_path / "store"
    (store / "data").mkdir(parents=True)
    runner = HostRunner(dev_cluster.kubeconfig, namespace, tmp_path / "runner", selector="hostrun=yes")
    with runner:
        dev_cluster.apply(job(namespace, "writes", 'echo "$MY_POD" > "$STORE/who"; echo done > /dev/termination-log',
                              store))
        dev_cluster.apply(job(namespace, "fails", 'echo "line 3: not JSON" > /dev/termination-log; exit 3', store))
        dev_cluster.kubectl("wait", "-n", namespace, "--for=condition=Complete", "job/writes", "--timeout=60s")
        dev_cluster.kubectl("wait", "-n", namespace, "--for=condition=Failed", "job/fails", "--timeout=60s")
    who = (store / "data" / "who").read_text().strip()
    assert who.startswith("writes-")  # the downward API gave the pod's own name
    pods = json.loads(dev_cluster.kubectl("get", "pods", "-n", namespace, "-l", "job-name=fails", "-o",
                                          "json").stdout)["items"]
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["message"] == "line 3: not JSON"


def test_a_long_running_pod_is_reachable_and_stopped_when_deleted(dev_cluster, namespace, tmp_path):
    dev_cluster.create_gpu_nodes(1, prefix="hostsrv")
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "server", "namespace": namespace, "labels": {"hostrun": "yes"}},
        "spec": {"containers": [{"name": "main", "image": "x", "command": [
            "sh", "-c", 'exec python3 -m http.server "$LORAPLANE_PORT" --bind 127.0.0.1']}]},
    }
    runner = HostRunner(dev_cluster.kubeconfig, namespace, tmp_path / "runner", selector="hostrun=yes",
                        grace_seconds=5)
    with runner:
        dev_cluster.apply(pod)
        url = wait_for(lambda: runner.endpoint("server"), what="the host process")

        def answers():
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(answers, what="the server to answer")
        proc = runner.processes["server"].proc
        dev_cluster.kubectl("delete", "pod", "server", "-n", namespace, "--wait=false")
        wait_for(lambda: proc.poll() is not None, what="the process to stop after the pod was deleted")
