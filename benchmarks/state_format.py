"""Size and encode+decode time of the user state: format 1 (JSON) vs format 2 (binary).

Format 1 is ``streams/sessions.py`` of the last commit that wrote it (``FORMAT1_COMMIT``,
read with ``git show``, so run it in a clone with history); format 2 is the installed
code.  Sizes: states built from the same events, and the states of whole replayed logs.
Timings are interleaved (old, new, old, new, ...); medians of the repeats.  Prints
tables and writes ``benchmarks/results/state_format.json``.

    nice .venv/bin/python benchmarks/state_format.py
"""

from __future__ import annotations

import base64
import json
import statistics
import subprocess
import sys
import timeit
import types
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson

import recstream.streams.sessions as new
from recstream.model.adapters import read_events
from recstream.model.shoplog import generate
from recstream.streams.records import event_to_dict
from recstream.streams.settings import Settings

#: The last commit whose user state was format 1 (JSON).
FORMAT1_COMMIT = "65f20ab"
RESULTS = Path(__file__).resolve().parent / "results" / "state_format.json"


def old_module() -> Any:
    """streams/sessions.py of ``FORMAT1_COMMIT`` (format 1), loaded under another name."""
    source = subprocess.run(
        ["git", "show", f"{FORMAT1_COMMIT}:streams/sessions.py"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent,
    ).stdout
    module = types.ModuleType("sessions_format1")
    sys.modules["sessions_format1"] = module
    exec(compile(source, "sessions_format1.py", "exec"), module.__dict__)
    return module


T0 = 1_700_000_000.0


def build(mod: Any, id_chars: int, n_history: int, n_pending: int, searches: bool) -> Any:
    """A state from real events: n_history closed tokens, n_pending open, up to 64 ids seen."""
    rules = mod.SessionRules(
        gap=1800, max_events=200, history_length=50, lateness=300, ttl=7 * 86400, dedup_window=64
    )
    state = None
    total = 70 + n_pending if n_history else n_pending
    for i in range(total):
        closed = i < total - n_pending
        ts = T0 + i * 4000.0 if closed else T0 + total * 4000.0 + i * 60.0
        if searches and i % 7 == 3:
            step = mod.step_of("search", ts, None, "red running shoes 红色跑鞋")
        else:
            step = mod.step_of("view", ts, f"B{i:0{id_chars - 1}d}", None)
        state = mod.apply(state, "user-1", f"00000000-0000-0000-0000-{i:012d}", step, rules).state
    return state


def format1_size(state: Any) -> int:
    """Bytes of ``state`` in the JSON layout of format 1 (what the previous release wrote)."""
    seen = base64.b64encode(state.seen).decode("ascii")
    history = [[ord(step[0]), step[1:]] for step in state.history]  # (code, text) pairs
    steps = [
        [ts, ord(step[0]), step[1:]]
        for ts, step in zip(state.pending_times, state.pending, strict=True)
    ]
    return len(orjson.dumps([1, state.last_ts, state.closed_until, history, steps, seen]))


def replayed_states(events: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """Every user's state after applying a log with the default rules (no sweep)."""
    rules = new.SessionRules.from_settings(Settings())
    states: dict[str, Any] = {}
    for event in events:
        if "query" in event:
            step = new.step_of("search", event["ts"], None, event["query"])
        elif "action" in event:
            step = new.step_of(event["action"], event["ts"], event["item_id"], None)
        else:  # reviews do not touch the session state
            continue
        user = event["user_id"]
        states[user] = new.apply(states.get(user), user, event["event_id"], step, rules).state
    return states


def logs() -> dict[str, Iterator[dict[str, Any]]]:
    """The logs to replay: the generated shop log, and the real ones that are present."""
    found: dict[str, Iterator[dict[str, Any]]] = {
        "generated shop log (2,000 users, 30 days, seed 7)": generate(2000, 5000, 30.0, 7)
    }
    data = Path("../shared/data")  # run from the repo root
    for label, path, fmt in [
        ("Amazon Games (SASRec Video.txt)", data / "sasrec_games/Video.txt", "sasrec"),
        ("DIGINETICA sample", data / "diginetica_sample/sample_train-item-views.csv", "diginetica"),
    ]:
        if path.exists():
            found[label] = map(event_to_dict, read_events(path, fmt))
    return found


def main() -> None:
    old = old_module()
    print("state sizes after replaying logs with the default rules (bytes per user)")
    print("| log | users | format 1 mean / p95 / max | format 2 mean / p95 / max |")
    replay: dict[str, Any] = {}
    for label, events in logs().items():
        states = list(replayed_states(events).values())
        one = sorted(format1_size(s) for s in states)
        two = sorted(len(s.to_bytes()) for s in states)
        f1 = [statistics.mean(one), one[int(0.95 * len(one))], one[-1]]
        f2 = [statistics.mean(two), two[int(0.95 * len(two))], two[-1]]
        replay[label] = {"users": len(states), "format1": f1, "format2": f2}
        print(
            f"| {label} | {len(states)} | {f1[0]:.0f} / {f1[1]} / {f1[2]} "
            f"| {f2[0]:.0f} / {f2[1]} / {f2[2]} |"
        )
    sizes: dict[int, tuple[int, int]] = {}
    for chars in (5, 10, 20):
        a, b = build(old, chars, 50, 3, False), build(new, chars, 50, 3, False)
        assert (len(b.history), len(b.pending), len(b.seen)) == (50, 3, 384)
        assert new.UserState.from_bytes(a.to_bytes()).history == b.history
        sizes[chars] = (len(a.to_bytes()), len(b.to_bytes()))
    print("size of a state with 50 history tokens + 3 pending + 64 seen ids (bytes)")
    print("| item id chars | format 1 (JSON) | format 2 (binary) |")
    for chars, (size1, size2) in sizes.items():
        print(f"| {chars} | {size1} | {size2} |")

    cases = {
        "50 history + 3 pending + 64 seen (10-char ids)": (10, 50, 3, False),
        "same, every 7th token a search": (10, 50, 3, True),
        "small: 3 events": (10, 0, 3, False),
    }
    repeats, number = 31, 2000
    results: dict[str, dict[str, Any]] = {}
    print("\nmicroseconds per call, median of", repeats, "interleaved repeats of", number)
    print(
        "| state | bytes 1 / 2 | enc+dec format 1 | enc+dec format 2 | format 2 / format 1 "
        "(paired, median [quartiles]) | enc 1 | enc 2 | dec 1 | dec 2 |"
    )
    for label, spec in cases.items():
        a, b = build(old, *spec), build(new, *spec)
        ra, rb = a.to_bytes(), b.to_bytes()
        fns = {
            "rt1": lambda a=a: old.UserState.from_bytes(a.to_bytes()),
            "rt2": lambda b=b: new.UserState.from_bytes(b.to_bytes()),
            "enc1": a.to_bytes,
            "enc2": b.to_bytes,
            "dec1": partial(old.UserState.from_bytes, ra),
            "dec2": partial(new.UserState.from_bytes, rb),
        }
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(repeats):
            for key, fn in fns.items():
                times[key].append(timeit.timeit(fn, number=number) / number * 1e6)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratios = sorted(two / one for one, two in zip(times["rt1"], times["rt2"], strict=True))
        q1, q2, q3 = statistics.quantiles(ratios, n=4)
        results[label] = {"bytes": [len(ra), len(rb)], "us": med, "rt_ratio": [q1, q2, q3]}
        cells = [f"{med[k]:.1f}" for k in ("rt1", "rt2")] + [f"{q2:.2f} [{q1:.2f}, {q3:.2f}]"]
        cells += [f"{med[k]:.1f}" for k in ("enc1", "enc2", "dec1", "dec2")]
        print(f"| {label} | {len(ra)} / {len(rb)} | " + " | ".join(cells) + " |")
    out = {
        "sizes": {str(k): v for k, v in sizes.items()},
        "replay": replay,
        "timings": results,
        "python": sys.version.split()[0],
    }
    RESULTS.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
