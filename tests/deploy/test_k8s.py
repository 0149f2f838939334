"""Kubernetes manifests: schema-valid (base and GPU overlay) and consistent with each other."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from recstream.streams.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
#: Oldest Kubernetes minor the manifests are checked against (autoscaling/v2, policy/v1).
KUBERNETES_VERSION = "1.30.0"

Doc = dict[str, Any]
Find = Callable[..., Doc]


@pytest.mark.parametrize("variant", ["k8s_base", "k8s_gpu"])
def test_every_manifest_is_valid_kubernetes(variant: str, request: pytest.FixtureRequest) -> None:
    docs: list[Doc] = request.getfixturevalue(variant)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ConfigMap",
            "HorizontalPodAutoscaler",
            "Job",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "StatefulSet",
        ]
    )
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_validation_rejects_a_broken_manifest(k8s_base: list[Doc], find: Find) -> None:
    """Negative control: the schema check does fail on a wrong type and an unknown field."""
    broken = copy.deepcopy(find(k8s_base, "StatefulSet"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    unknown = copy.deepcopy(find(k8s_base, "StatefulSet"))
    unknown["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES_VERSION, strict=True)


def settings_of(docs: list[Doc], find: Find) -> Settings:
    """The Settings a worker gets from the ConfigMap and Secret (validates every value)."""
    values = {**find(docs, "ConfigMap")["data"], **find(docs, "Secret")["stringData"]}
    fields = {name[len("RECSTREAM_") :].lower(): value for name, value in values.items()}
    unknown = set(fields) - set(Settings.model_fields)
    assert not unknown, f"not Settings fields: {unknown}"
    return Settings.model_validate(fields)  # the same parsing as from the environment


def worker_container(docs: list[Doc], find: Find) -> Doc:
    pod = find(docs, "StatefulSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dict(container)


def test_replicas_never_exceed_partitions(k8s_base: list[Doc], find: Find) -> None:
    settings = settings_of(k8s_base, find)
    hpa = find(k8s_base, "HorizontalPodAutoscaler")
    # The HPA owns the replica count; a fixed one would fight it on every apply.
    assert "replicas" not in find(k8s_base, "StatefulSet")["spec"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= settings.partitions


def test_hpa_scales_the_statefulset_on_consumer_lag(k8s_base: list[Doc], find: Find) -> None:
    settings = settings_of(k8s_base, find)
    spec = find(k8s_base, "HorizontalPodAutoscaler")["spec"]
    target = find(k8s_base, "StatefulSet")
    assert spec["scaleTargetRef"]["kind"] == "StatefulSet"
    assert spec["scaleTargetRef"]["name"] == target["metadata"]["name"]
    (metric,) = spec["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "kafka_consumergroup_lag"
    selector = metric["external"]["metric"]["selector"]["matchLabels"]
    assert selector == {"consumergroup": settings.app_id}


def test_worker_probes_hit_the_web_endpoints(k8s_base: list[Doc], find: Find) -> None:
    settings = settings_of(k8s_base, find)
    container = worker_container(k8s_base, find)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == settings.web_port
    assert settings.web_host == "0.0.0.0"  # the kubelet probes the pod IP
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "http"


def test_table_state_lives_on_a_volume_per_pod(k8s_base: list[Doc], find: Find) -> None:
    settings = settings_of(k8s_base, find)
    statefulset = find(k8s_base, "StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in worker_container(k8s_base, find)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == str(settings.data_dir)
    assert mounts["models"] == str(settings.model_dir)


def test_references_resolve(k8s_base: list[Doc], find: Find) -> None:
    statefulset = find(k8s_base, "StatefulSet")
    pod = statefulset["spec"]["template"]
    names = {(d["kind"], d["metadata"]["name"]) for d in k8s_base}
    for workload in (statefulset, find(k8s_base, "Job")):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for source in container["envFrom"]:
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names
                if "secretRef" in source:
                    assert ("Secret", source["secretRef"]["name"]) in names
    for volume in pod["spec"]["volumes"]:
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            assert ("PersistentVolumeClaim", claim) in names
    pod_labels = pod["metadata"]["labels"]
    service = find(k8s_base, "Service")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    for selector in (
        service["spec"]["selector"],
        find(k8s_base, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        statefulset["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()


def test_secret_holds_placeholders_only(k8s_base: list[Doc], find: Find) -> None:
    secret = find(k8s_base, "Secret")["stringData"]
    assert {"RECSTREAM_SASL_USERNAME", "RECSTREAM_SASL_PASSWORD"} <= set(secret)
    assert set(secret.values()) == {"CHANGE-ME"}
    config = find(k8s_base, "ConfigMap")["data"]
    assert not any("PASSWORD" in key or "SALT" in key for key in config)


def test_pods_run_as_the_images_non_root_user(k8s_base: list[Doc], find: Find) -> None:
    for kind in ("StatefulSet", "Job"):
        pod = find(k8s_base, kind)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001


def test_gpu_overlay(k8s_base: list[Doc], k8s_gpu: list[Doc], find: Find) -> None:
    settings = settings_of(k8s_gpu, find)
    assert settings.require_gpu is True
    assert settings.providers[0] == "CUDAExecutionProvider"
    container = worker_container(k8s_gpu, find)
    assert container["image"].split(":")[0] == "recstream-gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    # The patch keeps the base's probes and mounts.
    assert container["readinessProbe"] == worker_container(k8s_base, find)["readinessProbe"]
    pod = find(k8s_gpu, "StatefulSet")["spec"]["template"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"][
        "tolerations"
    ]
    assert pod["metadata"]["labels"]["recstream.io/accelerator"] == "gpu"
    # Base workers are labelled for CPU, which the ScoringOnCpu alert relies on.
    base_pod = find(k8s_base, "StatefulSet")["spec"]["template"]
    assert base_pod["metadata"]["labels"]["recstream.io/accelerator"] == "cpu"
    assert worker_container(k8s_base, find)["image"].split(":")[0] == "recstream"
