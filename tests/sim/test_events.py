"""The shard-checker contract: every event kind the code under test emits is typed in
``sim.events`` and either handled by the checker or explicitly ignored (with a reason)."""

from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest

from sim import events
from sim.checkers import Checker

ROOT = pathlib.Path(__file__).resolve().parents[2] / "silo"
EMIT = re.compile(r"""(?:\bemit|\bevents)\(\s*["'](\w+)["']""")
FIELD = re.compile(r"\b(\w+)=")


def emitted() -> dict[str, set[str]]:
    """Event kind -> the field names passed where it is emitted, over every module of silo/."""
    out: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text()
        for m in EMIT.finditer(text):
            depth, i = 0, m.start()
            while i < len(text):  # the call's argument text, up to its closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                if depth == 0 and text[i] == ")":
                    break
                i += 1
            args = text[m.end():i]
            names = set(FIELD.findall(args))
            names |= set(re.findall(r"""["'](\w+)["']\s*:""", args))  # a fields dict literal
            out.setdefault(m.group(1), set()).update(names)
    return out


def test_the_scan_finds_the_known_kinds() -> None:
    kinds = emitted()
    assert {"job_enqueued", "task_leased", "lease_ended", "shard_opened"} <= set(kinds)


@pytest.mark.parametrize("kind", sorted(emitted()))
def test_every_emitted_kind_is_typed_and_handled_or_ignored(kind: str) -> None:
    assert kind in events.KINDS, f"event {kind!r} is emitted in silo/ but not typed in sim.events"
    handled = hasattr(Checker, f"_on_{kind}")
    ignored = kind in events.IGNORED
    assert handled != ignored, (
        f"event {kind!r}: " + ("handled and also listed as ignored" if handled else
                               "no Checker._on_" + kind + " and not in sim.events.IGNORED")
    )
    fields = {f.name for f in dataclasses.fields(events.KINDS[kind])}
    missing = emitted()[kind] - fields
    assert not missing, f"event {kind!r} is emitted with fields {sorted(missing)} it lacks"


def test_typed_kinds_are_all_emitted() -> None:
    assert sorted(set(events.KINDS) - set(emitted())) == []


def test_parse_refuses_unknown_kinds_and_fields() -> None:
    with pytest.raises(events.UnknownEvent):
        events.parse("no_such_event", {})
    with pytest.raises(events.UnknownEvent):
        events.parse("task_leased", {"task_id": "t", "surprise": 1})
    ev = events.parse("task_leased", {"task_id": "t", "attempt": 2})
    assert isinstance(ev, events.TaskLeased) and ev.attempt == 2
