"""Model processes: a recommender's runs in child processes, on a real tiny exported model."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest

from recstream.streams import model_process, scoring
from recstream.streams.model_process import (
    ModelProcess,
    ModelProcessError,
    ModelProcesses,
    SessionSpec,
)
from recstream.streams.scoring import OnnxRecsScorer, RuntimeOptions, Token
from recstream.streams.settings import Settings

CPU = RuntimeOptions(providers=("CPUExecutionProvider",))
IN_PROCESSES = RuntimeOptions(providers=("CPUExecutionProvider",), model_processes=True)
CLICKS = [Token(f"item-{i}", "view") for i in range(40)]
#: Histories of many lengths: a batch of them runs in several parts.
LENGTHS = [1, 2, 3, 16, 2, 30, 1, 5, 9, 3, 2, 40, 7, 1, 2, 12, 3, 2, 1, 20]


@pytest.fixture
def recs(tiny_models: Path) -> OnnxRecsScorer:
    return OnnxRecsScorer(tiny_models / "recs.onnx", IN_PROCESSES)


def _pids(scorer: OnnxRecsScorer) -> list[int]:
    processes = scorer._model.current().processes
    assert processes is not None
    return processes.pids()


def _recommend(scorer: OnnxRecsScorer, lengths: list[int] = LENGTHS) -> list[scoring.RecsResult]:
    histories = [CLICKS[:n] for n in lengths]
    exclude = [{f"item-{n}"} for n in lengths]
    return scorer.recommend(histories, exclude, 10)


def _eventually(check: Callable[[], bool], within: float = 10.0) -> bool:
    """Whether ``check`` holds within ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _gone(pid: int) -> bool:
    """Whether process ``pid`` ends (and is reaped) within 10 s."""
    return _eventually(lambda: not Path(f"/proc/{pid}").exists())


def test_results_from_model_processes_are_those_of_runs_in_the_thread(
    tiny_models: Path, recs: OnnxRecsScorer
) -> None:
    in_thread = OnnxRecsScorer(tiny_models / "recs.onnx", CPU)
    assert in_thread._model.current().processes is None
    parts = recs._model.current().runs([CLICKS[:n] for n in LENGTHS])
    assert len(parts) > 1
    for lengths in (LENGTHS, [4]):  # several parts, and one run of one history
        expected, got = _recommend(in_thread, lengths), _recommend(recs, lengths)
        assert [[s.item_id for s in r.items] for r in got] == [
            [s.item_id for s in r.items] for r in expected
        ]
        for result, wanted in zip(got, expected, strict=True):
            np.testing.assert_allclose(
                [s.score for s in result.items], [s.score for s in wanted.items], rtol=1e-6
            )
    [pid] = _pids(recs)
    assert pid != os.getpid()


def test_each_calling_thread_has_a_process_of_its_own(recs: OnnxRecsScorer) -> None:
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def work() -> None:
        start.wait()
        try:
            for _ in range(3):
                _recommend(recs)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(_pids(recs))) == 2


def test_a_process_killed_between_batches_is_replaced_before_the_next(
    recs: OnnxRecsScorer, caplog: pytest.LogCaptureFixture
) -> None:
    expected = _recommend(recs)
    [first] = _pids(recs)
    failed = model_process.failures()
    os.kill(first, signal.SIGKILL)
    assert _eventually(lambda: not _pids(recs))  # the worker sees it gone
    assert _recommend(recs) == expected
    [second] = _pids(recs)
    assert second != first and _gone(first)
    assert model_process.failures() == failed  # nothing was sent to the dead one
    assert "runs in the scoring thread" not in caplog.text


def test_a_process_that_dies_with_a_batch_gives_it_back_to_the_thread(
    recs: OnnxRecsScorer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _recommend(recs)
    processes = recs._model.current().processes
    assert processes is not None
    process: ModelProcess = processes._local.process
    failed = model_process.failures()
    os.kill(process.pid, signal.SIGKILL)
    process._process.wait()
    monkeypatch.setattr(process, "is_alive", lambda: True)  # dead only once it is sent to
    assert _recommend(recs) == expected  # that batch ran in the thread
    assert f"model process {process.pid} " in caplog.text
    assert "runs in the scoring thread" in caplog.text
    assert model_process.failures() == failed + 1
    monkeypatch.undo()
    assert _recommend(recs) == expected
    assert _pids(recs) and process.pid not in _pids(recs)


def _start_one(scorer: OnnxRecsScorer) -> int:
    _recommend(scorer, [3])
    [pid] = _pids(scorer)
    return pid


def test_a_hung_process_is_killed_after_the_run_timeout(
    recs: OnnxRecsScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _recommend(recs)
    [pid] = _pids(recs)
    monkeypatch.setattr(model_process, "RUN_TIMEOUT", 0.5)
    failed = model_process.failures()
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    assert _recommend(recs) == expected  # run in the thread once the child gave up
    assert time.monotonic() - started < 4  # killed at once, not after the closing grace
    assert model_process.failures() == failed + 1
    assert _gone(pid)
    _recommend(recs)
    assert len(_pids(recs)) == 1 and pid not in _pids(recs)


def test_a_run_the_model_rejects_fails_that_run_only(tiny_models: Path) -> None:
    feeds = _feeds(tiny_models)
    process = ModelProcess(_spec(tiny_models))
    try:
        good = process.run([feeds])
        with pytest.raises(RuntimeError, match=f"model process {process.pid}: .*items"):
            process.run([{name: v for name, v in feeds.items() if name != "items"}])
        assert process.is_alive()
        again = process.run([feeds])
        for got, wanted in zip(again[0], good[0], strict=True):
            np.testing.assert_array_equal(got, wanted)
    finally:
        process.close()
    assert not process.is_alive()


def _spec(tiny_models: Path, data: bytes | None = None) -> SessionSpec:
    model = (tiny_models / "recs.onnx").read_bytes() if data is None else data
    return SessionSpec(model, 1, 1, int(scoring.ort.GraphOptimizationLevel.ORT_ENABLE_ALL))


def test_a_model_the_process_cannot_open_is_a_clear_start_error(tiny_models: Path) -> None:
    with pytest.raises(ModelProcessError, match="cannot open the model"):
        ModelProcess(_spec(tiny_models, b"not an onnx model"))


def test_no_process_to_spare_is_a_start_error(
    tiny_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(model_process.subprocess, "Popen", refused)
    with pytest.raises(ModelProcessError, match=r"cannot start a model process: .*unavailable"):
        ModelProcess(_spec(tiny_models))


def test_after_a_failed_start_runs_stay_in_the_thread_for_a_while(
    tiny_models: Path, recs: OnnxRecsScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that cannot start is tried again after ``START_RETRY_PAUSE`` seconds, not
    on every batch; every batch is answered meanwhile."""
    expected = _recommend(recs)
    now = [100.0]
    starts: list[SessionSpec] = []
    broken = ModelProcesses(_spec(tiny_models, b"not an onnx model"), clock=lambda: now[0])
    real_start = model_process.ModelProcess

    def counted(spec: SessionSpec) -> ModelProcess:
        starts.append(spec)
        return real_start(spec)

    monkeypatch.setattr(model_process, "ModelProcess", counted)
    recs._model.current().processes = broken
    failed = model_process.failures()
    assert _recommend(recs) == expected
    assert len(starts) == 1
    assert model_process.failures() == failed + 1
    assert broken.run([_feeds(tiny_models)]) is None  # paused: no start tried
    now[0] += model_process.START_RETRY_PAUSE - 1
    assert _recommend(recs) == expected
    assert len(starts) == 1
    now[0] += 1
    assert _recommend(recs) == expected
    assert len(starts) == 2


def test_processes_start_as_the_model_loads_and_serve_the_first_runs(
    tiny_models: Path,
) -> None:
    options = dataclasses.replace(IN_PROCESSES, prestart_processes=2)
    scorer = OnnxRecsScorer(tiny_models / "recs.onnx", options)
    assert _eventually(lambda: len(_pids(scorer)) == 2)  # before any run
    prestarted = set(_pids(scorer))
    assert prestarted <= _model_process_children()
    start = threading.Barrier(2)

    def work() -> None:
        start.wait()
        _recommend(scorer)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(_pids(scorer)) == prestarted  # the two threads took one each
    processes = scorer._model.current().processes
    assert processes is not None and not processes._spares
    processes.close()
    assert all(_gone(pid) for pid in prestarted)


def test_a_first_run_waits_for_a_process_still_starting(tiny_models: Path) -> None:
    feeds = _feeds(tiny_models)
    processes = ModelProcesses(_spec(tiny_models), prestart=1)
    try:
        assert processes._starting  # a start takes a fresh interpreter ~0.1 s
        processes.run([feeds])
        assert len(processes.pids()) == 1  # it waited for the spare, started no other
    finally:
        processes.close()


def test_a_prestart_that_fails_leaves_the_runs_in_the_threads(
    tiny_models: Path, recs: OnnxRecsScorer, caplog: pytest.LogCaptureFixture
) -> None:
    expected = _recommend(recs)
    failed = model_process.failures()
    broken = ModelProcesses(_spec(tiny_models, b"not an onnx model"), prestart=2)
    assert _eventually(lambda: not broken._starting)
    assert model_process.failures() == failed + 1  # one failure, not one per spare
    assert broken.run([_feeds(tiny_models)]) is None  # paused: no start tried
    assert "the scoring threads run the model until one starts" in caplog.text
    recs._model.current().processes = broken
    assert _recommend(recs) == expected  # in the thread
    assert model_process.failures() == failed + 1


def _model_process_children() -> set[int]:
    """This process's live model process children."""
    found = set()
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):  # gone, or a zombie meanwhile
            if "recstream.streams.model_process" in child.cmdline():
                found.add(child.pid)
    return found


def test_spares_started_after_the_model_was_dropped_end(tiny_models: Path) -> None:
    before = _model_process_children()
    processes = ModelProcesses(_spec(tiny_models), prestart=2)
    processes.close()  # while the first spare starts
    assert _eventually(lambda: not processes._starting)
    assert processes.pids() == [] and not processes._spares
    assert _eventually(lambda: _model_process_children() <= before)


def _feeds(tiny_models: Path) -> model_process.Feeds:
    model = scoring.load_recs_model(tiny_models / "recs.onnx", CPU)
    batch = model.encode([CLICKS[:3]], k=10)
    return scoring._bound(batch).feeds(model.exclusions(batch, [set()]))


def test_a_replaced_model_s_processes_end(tiny_models: Path, tmp_path: Path) -> None:
    path = tmp_path / "recs.onnx"
    path.write_bytes((tiny_models / "recs.onnx").read_bytes())
    scorer = OnnxRecsScorer(path, IN_PROCESSES)
    old = _start_one(scorer)
    assert scorer.reload()
    gc.collect()
    assert _gone(old)
    assert _start_one(scorer) != old


def test_processes_end_when_the_worker_is_killed(tiny_models: Path) -> None:
    """However the worker ends (here SIGKILL), its model processes see their pipe close."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from recstream.streams.scoring import OnnxRecsScorer, RuntimeOptions, Token\n"
        "options = RuntimeOptions(providers=('CPUExecutionProvider',), model_processes=True)\n"
        "scorer = OnnxRecsScorer(Path(sys.argv[1]), options)\n"
        "scorer.recommend([[Token('item-1', 'view')]], [set()], 5)\n"
        "print(*scorer._model.current().processes.pids(), flush=True)\n"
        "sys.stdin.read()\n"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", code, str(tiny_models / "recs.onnx")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    [child] = map(int, worker.stdout.readline().split())
    assert Path(f"/proc/{child}").exists()
    worker.kill()
    worker.wait()
    assert _gone(child)  # reaped by init, not by this process


def test_a_model_on_cuda_runs_in_its_thread(
    tiny_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CUDA the device does the work: no model processes, whatever the setting."""
    opened = scoring.open_model

    class OnCuda:
        def __init__(self, session: object) -> None:
            self._session = session

        def __getattr__(self, name: str) -> object:
            return getattr(self._session, name)

        def get_providers(self) -> list[str]:
            return [scoring.CUDA, "CPUExecutionProvider"]

    def on_cuda(path: Path, kind: str, options: RuntimeOptions) -> scoring.OpenedModel:
        real = opened(path, kind, options)
        return scoring.OpenedModel(OnCuda(real.session), real.meta, real.data, real.level)

    monkeypatch.setattr(scoring, "open_model", on_cuda)
    model = scoring.load_recs_model(tiny_models / "recs.onnx", IN_PROCESSES)
    assert model.processes is None


@pytest.mark.parametrize(
    ("value", "cpus", "expected"),
    [
        (None, 2.0, True),  # the default is auto
        (None, 1.0, False),
        ("auto", 4.0, True),
        ("auto", 1.5, False),
        ("false", 8.0, False),
        ("1", 1.0, True),
    ],
)
def test_the_setting_reaches_the_runtime_options(
    value: str | None, cpus: float, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is not None:
        monkeypatch.setenv("RECSTREAM_MODEL_PROCESSES", value)
    else:
        monkeypatch.delenv("RECSTREAM_MODEL_PROCESSES", raising=False)
    monkeypatch.setattr(model_process, "usable_cpus", lambda: cpus)
    monkeypatch.setenv("RECSTREAM_SCORING_THREADS", "3")
    options = RuntimeOptions.from_settings(Settings())
    assert options.model_processes is expected
    assert options.prestart_processes == (3 if expected else 0)
    replay = RuntimeOptions.from_settings(Settings(), scoring_threads=1)
    assert replay.prestart_processes == (1 if expected else 0)


def test_the_setting_takes_true_false_or_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTREAM_MODEL_PROCESSES", "sometimes")
    with pytest.raises(ValueError, match="model_processes"):
        Settings()


def test_auto_says_what_it_chose(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger=model_process.__name__):
        assert model_process.auto_enabled(2.0)
        assert not model_process.auto_enabled(1.0)
    assert [r.getMessage() for r in caplog.records] == [
        "RECSTREAM_MODEL_PROCESSES=auto: model processes (usable CPUs: 2)",
        "RECSTREAM_MODEL_PROCESSES=auto: the model runs in the scoring threads (usable CPUs: 1)",
    ]


def _fake_root(tmp_path: Path, cgroup: str, files: dict[str, str]) -> Path:
    """A folder standing for ``/``: ``proc/self/cgroup`` and files under sys/fs/cgroup."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        path = tmp_path / "sys/fs/cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("cgroup", "files", "quota"),
    [
        # cgroup v2 inside a container: its own cgroup at the root
        ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),
        # cgroup v2 seen from the host: the process's cgroup folder
        ("0::/kubepods/pod1\n", {"kubepods/pod1/cpu.max": "200000 100000\n"}, 2.0),
        # cgroup v1 (a Kubernetes pod with a CPU limit of 1), and without a limit
        (
            "4:cpu,cpuacct:/kubepods/pod1\n1:memory:/kubepods/pod1\n",
            {
                "cpu,cpuacct/kubepods/pod1/cpu.cfs_quota_us": "100000\n",
                "cpu,cpuacct/kubepods/pod1/cpu.cfs_period_us": "100000\n",
            },
            1.0,
        ),
        (
            "1:cpu:/\n0::/\n",
            {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
            None,
        ),
        ("0::/\n", {}, None),  # nothing readable: no limit known
        ("0::/\n", {"cpu.max": "lots\n"}, None),  # nor anything unexpected
        ("garbage\n", {}, None),
    ],
)
def test_the_cgroup_cpu_limit_is_read(
    tmp_path: Path, cgroup: str, files: dict[str, str], quota: float | None
) -> None:
    root = _fake_root(tmp_path, cgroup, files)
    assert model_process.cpu_quota(root) == quota
    affinity = len(os.sched_getaffinity(0))
    expected = float(affinity) if quota is None else min(float(affinity), quota)
    assert model_process.usable_cpus(root) == expected


def test_no_proc_means_no_limit(tmp_path: Path) -> None:
    assert model_process.cpu_quota(tmp_path) is None


def test_the_child_imports_neither_torch_nor_the_worker() -> None:
    """A child is a fresh interpreter with numpy and onnxruntime, not faust or torch."""
    code = (
        "import sys, recstream.streams.model_process\n"
        "bad = [m for m in ('torch', 'faust', 'aiokafka') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
