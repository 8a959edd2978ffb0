"""A real Prometheus process for the cluster tests (the binary from
``prom_build.py``): given rules and scrape configs, started on a free loopback
port with 1 s scrape and evaluation intervals and a query log; read through
its HTTP API. Standard library only (plus PyYAML, a dependency already)."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from . import prom_build
from .cluster import free_port


class PrometheusServer:
    def __init__(self, work: Path, rules: dict, scrape_configs: list[dict]):
        work.mkdir(parents=True, exist_ok=True)
        self.work, self.port = work, free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        (work / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        (work / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s",
                       "query_log_file": str(work / "queries.log")},
            "rule_files": [str(work / "rules.yaml")], "scrape_configs": scrape_configs}))
        self.log_path = work / "prometheus.log"
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [str(prom_build.prometheus()), f"--config.file={work / 'prometheus.yml'}",
             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def api(self, path: str, **params) -> dict:
        url = f"{self.address}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        body = json.loads(urllib.request.urlopen(url, timeout=10).read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {body}")
        return body["data"]

    def ready(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.address}/-/ready", timeout=5).status == 200
        except OSError:
            return False

    def firing(self, name: str) -> list[dict]:
        return [a["labels"] for a in self.api("alerts")["alerts"]
                if a["labels"]["alertname"] == name and a["state"] == "firing"]

    def query(self, promql: str) -> list[dict]:
        return self.api("query", query=promql)["result"]

    def queries_logged(self) -> str:
        path = self.work / "queries.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
