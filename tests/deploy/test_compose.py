"""docker-compose.yml: valid Compose Specification, scalable workers, wired monitoring."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
Doc = dict[str, Any]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    executable = str(CHECK_JSONSCHEMA) if CHECK_JSONSCHEMA.exists() else "check-jsonschema"
    assert shutil.which(executable), "check-jsonschema is not installed (extra `deploy`)"
    return subprocess.run(
        [executable, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_file_matches_the_compose_specification() -> None:
    done = check_compose_schema(REPO / "docker-compose.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_check_rejects_a_broken_compose_file(compose: Doc, tmp_path: Path) -> None:
    """Negative control: the validator really checks (a typo'd key fails)."""
    broken = dict(compose)
    broken["services"] = dict(compose["services"])
    broken["services"]["worker"] = {**compose["services"]["worker"], "depends_onn": ["kafka"]}
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    done = check_compose_schema(path)
    assert done.returncode != 0
    assert "depends_onn" in done.stdout + done.stderr


def services(compose: Doc) -> dict[str, Doc]:
    return dict(compose["services"])


def test_the_stack_has_every_part(compose: Doc) -> None:
    assert set(services(compose)) >= {
        "kafka",
        "topics",
        "trainer",
        "worker",
        "worker-gpu",
        "replay",
        "watch",
        "kafka-exporter",
        "prometheus",
        "grafana",
    }


def test_every_image_is_pinned(compose: Doc) -> None:
    for name, service in services(compose).items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image}"
    assert services(compose)["kafka"]["image"].startswith("apache/kafka:")


def test_kafka_runs_kraft_single_node(compose: Doc) -> None:
    env = services(compose)["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert "ZOOKEEPER" not in " ".join(env)
    assert "healthcheck" in services(compose)["kafka"]


def completed(service: Doc, dependency: str) -> bool:
    condition = service.get("depends_on", {}).get(dependency, {}).get("condition")
    return bool(condition == "service_completed_successfully")


@pytest.mark.parametrize("name", ["worker", "worker-gpu"])
def test_workers_scale(compose: Doc, name: str) -> None:
    worker = services(compose)[name]
    assert "container_name" not in worker
    assert "ports" not in worker, "a published host port would clash between replicas"
    env = worker["environment"]
    assert env["RECSTREAM_WEB_HOST"] == "0.0.0.0"
    state_dir = env["RECSTREAM_DATA_DIR"]
    # An anonymous volume (container path only): each replica gets its own.
    assert state_dir in worker["volumes"]
    assert any(v.startswith("models:") and v.endswith(":ro") for v in worker["volumes"])
    assert completed(worker, "trainer")
    assert completed(worker, "topics")
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_gpu_worker_reserves_an_nvidia_device(compose: Doc) -> None:
    gpu = services(compose)["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    assert gpu["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    assert gpu["environment"]["RECSTREAM_REQUIRE_GPU"] == "true"
    assert gpu["environment"]["RECSTREAM_PROVIDERS"].startswith("CUDAExecutionProvider")
    # Every other service runs without the profile.
    assert [n for n, s in services(compose).items() if "profiles" in s] == ["worker-gpu"]


def test_serving_services_use_the_torch_free_image(compose: Doc) -> None:
    for name in ("topics", "worker", "replay"):
        assert services(compose)[name]["build"]["dockerfile"] == "deploy/Dockerfile", name
    assert services(compose)["trainer"]["build"]["dockerfile"] == "deploy/Dockerfile.train"


def test_trainer_writes_the_models_volume_the_workers_read(compose: Doc) -> None:
    trainer = services(compose)["trainer"]
    assert "models:/models" in trainer["volumes"]
    assert trainer["environment"]["RECSTREAM_MODEL_DIR"] == "/models"
    script = trainer["command"][-1]
    for step in ("recstream generate", "recstream train recs", "recstream train sentiment"):
        assert step in script
    assert "recstream export" in script
    assert "models" in compose["volumes"]


def test_replay_pipes_the_generated_log(compose: Doc) -> None:
    script = services(compose)["replay"]["command"][-1]
    generate, replay = script.split("|")
    assert "recstream generate" in generate and "--out -" in generate
    assert replay.split()[:3] == ["recstream", "replay", "-"]


def test_watch_prints_the_recommendations_topic(compose: Doc) -> None:
    watch = services(compose)["watch"]
    assert watch["image"] == services(compose)["kafka"]["image"]
    assert watch["entrypoint"][0].endswith("kafka-console-consumer.sh")
    command = watch["command"]
    assert command[command.index("--topic") + 1] == "recommendations"
    assert command[command.index("--bootstrap-server") + 1] == "kafka:9092"


def test_mounted_host_files_exist(compose: Doc) -> None:
    for name, service in services(compose).items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_discovers_every_worker_replica(compose: Doc) -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs: dict[str, Any] = {job["job_name"]: job for job in config["scrape_configs"]}
    for job_name, service_name in (
        ("recstream-worker", "worker"),
        ("recstream-worker-gpu", "worker-gpu"),
    ):
        sd = jobs[job_name]["dns_sd_configs"][0]
        assert sd["names"] == [service_name]
        assert sd["type"] == "A"
        env = services(compose)[service_name]["environment"]
        assert str(sd["port"]) == env["RECSTREAM_WEB_PORT"]
        assert jobs[job_name]["metrics_path"] == "/metrics"
    exporter = jobs["kafka-exporter"]["static_configs"][0]["targets"][0]
    assert exporter.split(":")[0] in services(compose)
    mounts = services(compose)["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    assert config["rule_files"] == ["alerts.yml"]  # resolved next to prometheus.yml


def test_grafana_is_provisioned_from_the_repository(compose: Doc) -> None:
    grafana = services(compose)["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_dir = mounts["./deploy/grafana/dashboards"]
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "recstream.yml")
    assert provider["providers"][0]["options"]["path"] == dashboards_dir
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    url = datasource["datasources"][0]["url"]
    assert url.split("//")[1].split(":")[0] in services(compose)
