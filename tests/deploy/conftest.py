"""Shared readers for the deployment files: compose, kustomize (rendered here), Dockerfiles.

Test modules cannot import this file (pytest runs with --import-mode=importlib), so
everything they share is a fixture.

There is no Docker engine nor cluster in the test environment, so deployment files
are checked by schema validation and by cross-checking them against the package.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu", "Dockerfile.train")

Doc = dict[str, Any]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def compose() -> Doc:
    """docker-compose.yml, parsed (anchors and merge keys resolved by PyYAML)."""
    return dict(load_yaml(REPO / "docker-compose.yml"))


# --- a small kustomize: resources, strategic-merge patches, images, labels ------------


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize does it for the fields used here.

    Mappings merge key by key; lists of mappings that all have ``name`` merge item by
    item on ``name``; any other list or value replaces the base.
    """
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    named = (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in [*base, *patch])
    )
    if named:
        by_name = {item["name"]: item for item in base}
        result = [_merge(by_name[i["name"]], i) if i["name"] in by_name else i for i in patch]
        patched = {item["name"] for item in patch}
        return [item for item in base if item["name"] not in patched] + result
    return copy.deepcopy(patch)


def _containers(doc: Doc) -> list[Doc]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return [*pod.get("containers", []), *pod.get("initContainers", [])]


def render_kustomization(folder: Path) -> list[Doc]:
    """The manifests ``kubectl apply -k folder`` would apply (the subset of kustomize used)."""
    kustomization = load_yaml(folder / "kustomization.yaml")
    docs: list[Doc] = []
    for resource in kustomization.get("resources", []):
        path = (folder / resource).resolve()
        if path.is_dir():
            docs += render_kustomization(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    for patch in kustomization.get("patches", []):
        patch_doc = load_yaml(folder / patch["path"])
        targets = [
            i
            for i, d in enumerate(docs)
            if d["kind"] == patch_doc["kind"]
            and d["metadata"]["name"] == patch_doc["metadata"]["name"]
        ]
        assert len(targets) == 1, f"patch {patch['path']} matches {len(targets)} resources"
        docs[targets[0]] = _merge(docs[targets[0]], patch_doc)
    for image in kustomization.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    for label_set in kustomization.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label_set["pairs"])
    return docs


@pytest.fixture(scope="session")
def k8s_base() -> list[Doc]:
    return render_kustomization(K8S / "base")


@pytest.fixture(scope="session")
def k8s_gpu() -> list[Doc]:
    return render_kustomization(K8S / "overlays" / "gpu")


def _find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} manifests"
    return found[0]


@pytest.fixture(scope="session")
def find() -> Callable[..., Doc]:
    """``find(docs, kind, name=None)``: the one manifest of that kind (and name)."""
    return _find


@pytest.fixture(scope="session")
def render() -> Callable[[Path], list[Doc]]:
    """``render(folder)``: the manifests of a kustomization folder."""
    return render_kustomization


# --- Dockerfiles ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def dockerfiles() -> dict[str, tuple[dockerfile.Command, ...]]:
    """Each Dockerfile's instructions, parsed by BuildKit's own parser (PyPI ``dockerfile``)."""
    return {name: dockerfile.parse_file(str(DEPLOY / name)) for name in DOCKERFILES}


# --- commands ------------------------------------------------------------------------


def _recstream_invocations(command: list[str] | str) -> list[list[str]]:
    """Every ``recstream ...`` argv in a compose/k8s command (exec form or shell script)."""
    if isinstance(command, list) and not any(c in ("-c", "-ec") for c in command):
        return [list(command)] if command[0] != "recstream" else [list(command[1:])]
    script = command[-1] if isinstance(command, list) else command
    argvs = []
    for line in script.replace("|", "\n").replace("&&", "\n").splitlines():
        words = shlex.split(line.strip())
        if words and words[0] == "recstream":
            argvs.append(words[1:])
    return argvs


@pytest.fixture(scope="session")
def recstream_invocations() -> Callable[[list[str] | str], list[list[str]]]:
    """``recstream_invocations(command)``: each ``recstream`` argv in a command."""
    return _recstream_invocations


@pytest.fixture(scope="session")
def parse_command() -> Callable[[list[str]], Any]:
    """Parse ``recstream`` arguments with the real CLI parser (raises SystemExit if bad)."""
    from recstream.streams.cli import build_parser

    parser = build_parser()
    return parser.parse_args
