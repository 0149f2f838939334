"""Images and the commands/settings that compose, Kubernetes and the Dockerfiles pass them.

Every ``recstream ...`` command must parse with the real CLI, every ``RECSTREAM_*``
variable must be a :class:`Settings` field with a valid value, and the serving images
must be torch-free, pinned, multi-stage, non-root and health-checked.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dockerfile
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from recstream.streams.cli import COMMANDS
from recstream.streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SERVING = ("Dockerfile", "Dockerfile.gpu")

Doc = dict[str, Any]
Instructions = dict[str, tuple[dockerfile.Command, ...]]
Invocations = Callable[[list[str] | str], list[list[str]]]


def instructions(dockerfiles: Instructions, name: str, keyword: str) -> list[dockerfile.Command]:
    return [c for c in dockerfiles[name] if c.cmd == keyword]


def exec_form(command: dockerfile.Command) -> list[str]:
    assert command.json, f"use the exec form: {command.original}"
    return list(command.value)


def shell_text(dockerfiles: Instructions, name: str, keyword: str) -> str:
    return " ".join(" ".join(c.value) for c in instructions(dockerfiles, name, keyword))


# --- commands --------------------------------------------------------------------------


def all_commands(compose: Doc, k8s_base: list[Doc], dockerfiles: Instructions) -> list[Any]:
    """(where, command) for everything that runs the recstream CLI."""
    found: list[Any] = []
    for name, service in compose["services"].items():
        if service.get("image", "").startswith(("recstream", "recstream-")) and (
            "command" in service
        ):
            # A shell entrypoint (["/bin/sh", "-ec"]) makes the command a script.
            found.append((f"compose {name}", service.get("entrypoint", []) + service["command"]))
    for doc in k8s_base:
        for container in (
            doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        ):
            found.append((f"k8s {doc['metadata']['name']}", container["args"]))
    for name in dockerfiles:
        (cmd,) = instructions(dockerfiles, name, "CMD")
        found.append((f"{name} CMD", exec_form(cmd)))
    return found


def test_every_command_exists_in_the_cli(
    compose: Doc,
    k8s_base: list[Doc],
    dockerfiles: Instructions,
    recstream_invocations: Invocations,
    parse_command: Callable[[list[str]], Any],
) -> None:
    seen: set[str] = set()
    for where, command in all_commands(compose, k8s_base, dockerfiles):
        argvs = recstream_invocations(command)
        assert argvs, f"{where}: no recstream command in {command!r}"
        for argv in argvs:
            if argv == ["--help"]:
                continue
            target = COMMANDS[argv[0]]
            if isinstance(target, dict):
                assert argv[1] in target, f"{where}: recstream {argv[0]} {argv[1]}?"
            try:
                parse_command(argv)
            except SystemExit as exc:
                pytest.fail(f"{where}: `recstream {' '.join(argv)}` does not parse ({exc})")
            seen.add(" ".join(argv[:2]) if isinstance(target, dict) else argv[0])
    expected = {"topics", "worker", "generate", "replay", "train recs", "train sentiment"}
    assert expected | {"export"} <= seen


def test_images_start_the_cli(dockerfiles: Instructions) -> None:
    for name in dockerfiles:
        (entrypoint,) = instructions(dockerfiles, name, "ENTRYPOINT")
        assert exec_form(entrypoint) == ["recstream"], name
    for name in SERVING:
        (cmd,) = instructions(dockerfiles, name, "CMD")
        assert exec_form(cmd) == ["worker"]


# --- settings --------------------------------------------------------------------------


def recstream_env(mapping: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in mapping.items() if k.startswith("RECSTREAM_")}


def dockerfile_env(dockerfiles: Instructions, name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for command in instructions(dockerfiles, name, "ENV"):
        pairs = command.value  # (key, value, key, value, ...)
        env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return recstream_env(env)


def as_settings(where: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a process with exactly ``env`` reads (raises if a value is invalid)."""
    fields = {name[len("RECSTREAM_") :].lower() for name in env}
    unknown = fields - set(Settings.model_fields)
    assert not unknown, f"{where}: {sorted(unknown)} are not Settings fields"
    with monkeypatch.context() as patch:
        for name in os.environ:
            if name.startswith("RECSTREAM_"):
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings()


def test_every_recstream_variable_is_a_valid_setting(
    compose: Doc,
    k8s_base: list[Doc],
    k8s_gpu: list[Doc],
    dockerfiles: Instructions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked = 0
    for name, service in compose["services"].items():
        env = recstream_env(service.get("environment", {}))
        if env:
            as_settings(f"compose {name}", env, monkeypatch)
            checked += 1
    for docs in (k8s_base, k8s_gpu):
        for doc in docs:
            env = recstream_env({**doc.get("data", {}), **doc.get("stringData", {})})
            if env:
                as_settings(f"k8s {doc['kind']} {doc['metadata']['name']}", env, monkeypatch)
                checked += 1
    for name in dockerfiles:
        settings = as_settings(name, dockerfile_env(dockerfiles, name), monkeypatch)
        assert settings.web_host == "127.0.0.1", "images keep the loopback default"
    assert checked >= 8


def test_images_put_state_and_models_where_deployments_mount_them(
    compose: Doc, dockerfiles: Instructions
) -> None:
    for name in SERVING:
        env = dockerfile_env(dockerfiles, name)
        worker = compose["services"]["worker"]
        assert env["RECSTREAM_DATA_DIR"] == worker["environment"]["RECSTREAM_DATA_DIR"]
        assert env["RECSTREAM_MODEL_DIR"] == worker["environment"]["RECSTREAM_MODEL_DIR"]
        # created (and owned by the user) in the image, so volumes inherit the owner
        run = shell_text(dockerfiles, name, "RUN")
        assert f"mkdir -p {env['RECSTREAM_DATA_DIR']} {env['RECSTREAM_MODEL_DIR']}" in run


# --- Dockerfiles -----------------------------------------------------------------------


INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu", "Dockerfile.train"])
def test_only_known_instructions(dockerfiles: Instructions, name: str) -> None:
    """BuildKit's parser accepts any word as an instruction; the builder would not."""
    assert {c.cmd for c in dockerfiles[name]} <= INSTRUCTIONS
    assert dockerfiles[name][0].cmd in ("FROM", "ARG")


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu", "Dockerfile.train"])
def test_multi_stage_and_non_root(dockerfiles: Instructions, name: str) -> None:
    stages = instructions(dockerfiles, name, "FROM")
    assert len(stages) >= 2, "build and runtime stages"
    assert [v.lower() for v in stages[0].value[1:]] == ["as", "build"]
    users = instructions(dockerfiles, name, "USER")
    assert users and users[-1].value[0] not in ("root", "0"), "the runtime stage runs as a user"
    last_from = max(i for i, c in enumerate(dockerfiles[name]) if c.cmd == "FROM")
    runtime = dockerfiles[name][last_from:]
    assert any(c.cmd == "COPY" and "--from=build" in c.flags for c in runtime)


@pytest.mark.parametrize("name", SERVING)
def test_serving_images_check_health(dockerfiles: Instructions, name: str) -> None:
    (healthcheck,) = instructions(dockerfiles, name, "HEALTHCHECK")
    assert healthcheck.json
    assert list(healthcheck.value) == ["CMD", "python", "-m", "recstream.streams.web", "/healthz"]
    assert "--interval=15s" in healthcheck.flags
    (expose,) = instructions(dockerfiles, name, "EXPOSE")
    assert expose.value == ("6066",)


@pytest.mark.parametrize("name", SERVING)
def test_serving_images_install_without_torch(dockerfiles: Instructions, name: str) -> None:
    copies = shell_text(dockerfiles, name, "COPY")
    assert "deploy/requirements-serving.txt" in copies
    run = shell_text(dockerfiles, name, "RUN")
    assert "pip install --no-deps -r /tmp/requirements.txt" in run
    assert "pip install --no-deps /src " in run
    assert "[train]" not in run
    assert "pip check" in run


def test_gpu_image_is_cuda_13_with_cudnn(dockerfiles: Instructions) -> None:
    (arg,) = [c.value[0] for c in instructions(dockerfiles, "Dockerfile.gpu", "ARG")]
    assert arg.startswith("CUDA_IMAGE=")
    image = arg.split("=", 1)[1]
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", image), image


def requirement_names(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "--")):
            name, sep, version = line.partition("==")
            assert sep and version, f"{path.name}: not pinned: {line}"
            pins[name] = version
    return pins


def test_serving_pins_exclude_torch_and_training_tools() -> None:
    serving = requirement_names(DEPLOY / "requirements-serving.txt")
    train = requirement_names(DEPLOY / "requirements-train.txt")
    for heavy in ("torch", "onnx", "onnxscript", "tensorboard", "matplotlib"):
        assert heavy not in serving
        assert heavy in train
    for needed in ("faust-streaming", "aiokafka", "onnxruntime-gpu", "prometheus-client"):
        assert needed in serving
    assert train["torch"].endswith("+cpu")
    assert serving.items() <= train.items(), "both images pin the same serving stack"


IMAGE_MARKERS = {"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}


@pytest.mark.parametrize(("image", "extras"), [("serving", ()), ("train", ("train",))])
def test_pins_satisfy_the_package_requirements(image: str, extras: tuple[str, ...]) -> None:
    """Every dependency pyproject.toml declares for the image is pinned to an allowed version.

    (Transitive completeness is checked by ``pip check`` in the image build; the pins
    are regenerated with ``python deploy/lock.py IMAGE``.)
    """
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        declared += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = {
        canonicalize_name(name): Version(version)
        for name, version in requirement_names(DEPLOY / f"requirements-{image}.txt").items()
    }
    for requirement in declared:
        if requirement.marker is not None and not requirement.marker.evaluate(IMAGE_MARKERS):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements-{image}.txt lacks {requirement}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements-{image}.txt pins {name}=={pins[name]}, outside {requirement}"
        )


def test_lock_script_writes_complete_pins(tmp_path: Path) -> None:
    """deploy/lock.py pins this environment's closure of recstream, torch-free for serving."""
    done = subprocess.run(
        [sys.executable, str(DEPLOY / "lock.py"), "serving"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    path = tmp_path / "requirements.txt"
    path.write_text(done.stdout, encoding="utf-8")
    pins = requirement_names(path)
    assert "torch" not in pins and "recstream" not in pins
    assert {"faust-streaming", "mode-streaming", "aiohttp", "aiokafka"} <= set(pins)


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu", "Dockerfile.train"])
def test_build_context_holds_what_is_copied(dockerfiles: Instructions, name: str) -> None:
    patterns = (DEPLOY / f"{name}.dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [p for p in patterns if p and not p.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for rule in rules:
            negated = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negated
        return keep

    for copy in instructions(dockerfiles, name, "COPY"):
        if any(flag.startswith("--from=") for flag in copy.flags):
            continue
        *sources, _destination = copy.value
        for source in sources:
            assert (REPO / source).exists(), f"{name}: COPY {source}: missing"
            assert included(source), f"{name}: COPY {source} is excluded by its .dockerignore"
    assert not included(".venv")
    assert not included("models/recs.onnx")
