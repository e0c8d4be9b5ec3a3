"""The stored traceback of a failed handler names files relative to their import roots."""

from __future__ import annotations

import os

from silo.client.tracebacks import import_roots, portable_traceback, relative_name


def _fail() -> None:
    raise ValueError("the handler broke")


def _chained() -> None:
    try:
        _fail()
    except ValueError as exc:
        raise RuntimeError("while handling") from exc


def _caught(fn) -> BaseException:  # type: ignore[no-untyped-def]
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the exception is the test's subject
        return exc
    raise AssertionError("did not raise")


def test_frames_are_named_relative_to_the_import_root() -> None:
    text = portable_traceback(_caught(_fail))
    assert 'File "tests/client/test_tracebacks.py"' in text
    assert 'raise ValueError("the handler broke")' in text  # the source line is kept
    assert text.rstrip().endswith("ValueError: the handler broke")
    here = os.path.abspath(__file__)
    assert here not in text and os.path.dirname(here) not in text


def test_chained_exceptions_are_renamed_too() -> None:
    text = portable_traceback(_caught(_chained))
    assert "The above exception was the direct cause" in text
    assert text.count('File "tests/client/test_tracebacks.py"') >= 3
    assert os.path.abspath(__file__) not in text


def test_the_same_text_from_any_install_location() -> None:
    exc = _caught(_fail)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    moved = portable_traceback(exc, roots=[root])
    assert moved == portable_traceback(exc)


def test_relative_name() -> None:
    roots = ["/srv/app/lib", "/srv/app"]
    assert relative_name("/srv/app/lib/pkg/m.py", roots) == "pkg/m.py"  # the nested root
    assert relative_name("/srv/app/tasks.py", roots) == "tasks.py"
    assert relative_name("/srv/application/x.py", roots) == "/srv/application/x.py"
    assert relative_name("<string>", roots) == "<string>"
    assert import_roots() == sorted(import_roots(), key=lambda r: (-len(r), r))
