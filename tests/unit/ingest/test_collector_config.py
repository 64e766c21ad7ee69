"""The documented OpenTelemetry Collector config forwards traces and logs to governor ingest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONFIG = Path(__file__).resolve().parents[3] / "ops" / "otel-collector" / "governor.yaml"
BUILDER = CONFIG.with_name("builder.yaml")


def test_the_collector_config_exports_traces_and_logs_to_the_receiver() -> None:
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    exporter = config["exporters"]["otlphttp/governor"]
    assert "4318" in exporter["endpoint"]
    assert (exporter["encoding"], exporter["compression"]) == ("proto", "gzip")
    assert exporter["retry_on_failure"]["enabled"] is True
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces/governor", "logs/governor"}
    for pipeline in pipelines.values():
        assert pipeline["exporters"] == ["otlphttp/governor"]
        assert set(pipeline["processors"]) <= set(config["processors"])
        assert set(pipeline["receivers"]) <= set(config["receivers"])
    # whole traces in one request: the receiver resolves conversations within a request
    assert pipelines["traces/governor"]["processors"][0] == "groupbytrace"


def test_the_built_collector_has_every_component_the_config_names() -> None:
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    manifest: dict[str, Any] = yaml.safe_load(BUILDER.read_text())
    for section, suffix in (
        ("receivers", "receiver"),
        ("processors", "processor"),
        ("exporters", "exporter"),
    ):
        modules = {m["gomod"].split()[0].rsplit("/", 1)[-1] for m in manifest[section]}
        for component in config[section]:
            assert f"{component.split('/')[0]}{suffix}" in modules, (section, component)
    # one release for every collector module (mixed releases do not build)
    versions = {
        m["gomod"].split()[1] for s in ("receivers", "processors", "exporters") for m in manifest[s]
    }
    assert versions <= {"v0.165.0", "v0.165.1"}
