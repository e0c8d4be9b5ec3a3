"""``python -m silo.bench peers`` / ``plot`` argument handling (silo/bench/__main__.py)."""

from __future__ import annotations

import pytest

from silo.bench.__main__ import main
from silo.bench.peers import PeersConfig


@pytest.mark.parametrize("field,value,limit", [("jobs", 0, "1..1000000"),
                                               ("batch", 1001, "1..1000"),
                                               ("workers", 17, "1..16"),
                                               ("rounds", 0, "1..20")])
def test_config_names_the_limit(field: str, value: int, limit: str) -> None:
    with pytest.raises(ValueError, match=rf"--{field} must be within {limit}"):
        PeersConfig(**{field: value}).check()


def test_bad_arguments_are_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["peers", "--jobs", "0"])
    assert exc.value.code == 2
    assert "--jobs must be within" in capsys.readouterr().err


def test_plot_without_results_is_a_usage_error(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plot", "--results", str(tmp_path / "none.jsonl")])
    assert exc.value.code == 2
    assert "no results file" in capsys.readouterr().err
