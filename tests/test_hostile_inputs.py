"""benchmarks/hostile_inputs.py: a few of its cheap cases, and the measuring it relies on."""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings

import pytest
from helpers import REPO
from PIL import Image


@pytest.fixture(scope="module")
def hostile():
    spec = importlib.util.spec_from_file_location("hostile_inputs", REPO / "benchmarks" / "hostile_inputs.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["hostile_inputs"] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    yield module
    del sys.modules["hostile_inputs"]


@pytest.fixture(scope="module")
def spawner(hostile):
    spawner = hostile.Spawner()
    yield spawner
    spawner.close()


def test_cheap_cases_pass_with_one_line_each(hostile, spawner, tmp_path) -> None:
    names = r"^(serve-port-70000|same-folder-overwrite|convert-zip-dotdot-member)$"
    cases = list(hostile.build_cases(tmp_path, names))
    assert [c.name for c in cases] == [
        "same-folder-overwrite",
        "convert-zip-dotdot-member",
        "serve-port-70000",
    ]
    for case in cases:
        result = hostile.run_case(case, spawner)
        line = hostile.format_result(result, tmp_path)
        assert result.passed, line
        assert line.startswith(f"PASS {case.name} | ") and "\n" not in line
        assert "inputs identical" in line and " MB | " in line
        assert 0 < result.peak_bytes < hostile.REFUSED_PEAK_BYTES


def test_a_missed_expectation_fails_the_case(hostile, spawner, tmp_path) -> None:
    (tmp_path / "wrong").mkdir()
    case = hostile.Case("wrong", ["serve", "--port", "70000"], [], 0, r"restored", root=tmp_path / "wrong")
    result = hostile.run_case(case, spawner)
    assert not result.passed
    assert any("exit 2, expected 0" in p for p in result.problems)
    assert any("no line matches" in p for p in result.problems)
    assert "FAIL wrong" in hostile.format_result(result, tmp_path)
    assert "1 failed" in hostile.summary_line([result], 1.0)


def test_peak_memory_is_the_childs_own(hostile, spawner, tmp_path) -> None:
    ballast = bytearray(400 << 20)  # this process grows; a child forked from it must not report that
    ballast[::4096] = b"x" * len(ballast[::4096])
    log = tmp_path / "child.log"
    small = spawner.start([sys.executable, "-c", "pass"], tmp_path, dict(os.environ), log)
    big = spawner.start(
        [sys.executable, "-c", "b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096])"],
        tmp_path,
        dict(os.environ),
        log,
    )
    small_code, small_peak = small.wait(60)
    big_code, big_peak = big.wait(60)
    del ballast
    assert small_code == big_code == 0
    assert small_peak < 100 << 20
    assert big_peak > 300 << 20


def test_a_child_past_its_time_is_killed(hostile, spawner, tmp_path) -> None:
    child = spawner.start(
        [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, dict(os.environ), tmp_path / "log"
    )
    code, _ = child.wait(0.5)
    assert code is None and not child.running()


def test_digest_sees_content_additions_and_links(hostile, tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(b"1")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing")
    before = hostile.digest([tmp_path])
    assert hostile.digest([tmp_path]) == before  # the FIFO is never opened (that would block)
    (tmp_path / "a.png").write_bytes(b"2")
    assert hostile.digest([tmp_path]) != before
    (tmp_path / "a.png").write_bytes(b"1")
    (tmp_path / "sub").mkdir()
    assert hostile.digest([tmp_path]) != before
    assert hostile.digest([tmp_path], exclude=[tmp_path / "sub"]) == before


def test_the_header_png_is_the_issues_17_kb_file(hostile, tmp_path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(hostile.blank_bilevel_png(hostile.HUGE_SIDE))
    assert 15_000 < path.stat().st_size < 20_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # 144 MP: what the case is about
        with Image.open(path) as image:
            assert image.size == (12000, 12000) and image.mode == "1"
