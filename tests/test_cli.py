"""The ``latent-restore`` command line: parsing, --version, flag validation and the exit codes of refusals.

The commands' work is tested with the library (pipeline, batch, convert, web); here only what the
console script itself decides: which arguments it accepts, what it says, and which code it exits with.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import pytest
from helpers import REPO

from latent_restore.cli import build_parser, main
from latent_restore.commands import build_pipeline, parse_shard

BUILT_IN = REPO / "latent_restore" / "default_weights"
COMMANDS = {"convert", "download", "weights", "run", "eval", "degrade", "serve"}


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """argparse's exit 2 for ``argv``; its message on stderr."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"latent-restore {version('latent-restore')}"


def test_every_command_has_a_handler_and_help() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == COMMANDS
    for name, sub in subparsers.choices.items():
        assert callable(sub.get_default("handler")), name
        assert sub.format_help().startswith(f"usage: latent-restore {name}")


def test_run_defaults_are_the_documented_ones() -> None:
    args = build_parser().parse_args(["run", "--input", "in", "--output", "out"])
    assert (args.device, args.precision, args.preset, args.model) == ("auto", "fp32", "default", "two-vae")
    assert not (args.with_scratch or args.hr or args.no_faces or args.colorize or args.overwrite)
    assert args.scratch_context == "tiled" and args.shard is None and args.weights is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: command"),
        (["restore"], "invalid choice: 'restore'"),
        (["run", "--output", "out"], "the following arguments are required: --input"),
        (["run", "--input", "a", "--output", "b", "--bogus"], "unrecognized arguments: --bogus"),
        (["run", "--input", "a", "--output", "b", "--precision", "fp16"], "invalid choice: 'fp16'"),
        (["run", "--input", "a", "--output", "b", "--face-size", "128"], "invalid choice: 128"),
        (["run", "--input", "a", "--output", "b", "--max-pixels", "0"], "expected a positive number"),
        (["serve", "--port", "70000"], "between 0 and 65535, got 70000"),
        (["serve", "--port", "http"], "a port is a whole number, got 'http'"),
        (["serve", "--max-upload-mb", "0"], "expected a number above 0"),
        (["serve", "--memory-limit", "-1"], "expected a number above 0"),
        (["serve", "--ttl-minutes", "soon"], "expected a number, got 'soon'"),
        (["convert", "--out", "w"], "the following arguments are required: --official"),
    ],
)
def test_bad_arguments_exit_2_and_say_why(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _usage_error(argv, capsys)
    assert err.startswith("usage: latent-restore")
    assert message in err


def test_memory_limit_reaches_the_pipeline_in_bytes(tiny_weights) -> None:
    """``--memory-limit`` is in GiB; without it the pipeline takes its default budget (None)."""
    for command in (["run", "--input", "a", "--output", "b"], ["serve"]):
        args = build_parser().parse_args([*command, "--memory-limit", "0.5", "--no-faces"])
        assert build_pipeline(args, tiny_weights).memory_limit == 2**29
        args = build_parser().parse_args([*command, "--no-faces"])
        assert build_pipeline(args, tiny_weights).memory_limit is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0/1", (0, 1)), ("2/4", (2, 4))],
)
def test_shard_parses_k_of_n(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


def test_shard_rejects_what_is_not_k_of_n() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="K/N"):
        parse_shard("half")


def test_shard_defaults_to_torchrun_rank_and_ignores_half_of_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard(None) == (1, 3)
    monkeypatch.delenv("WORLD_SIZE")
    with caplog.at_level(logging.WARNING, logger="latent_restore"):
        assert parse_shard(None) == (0, 1)
    assert "ignoring RANK without WORLD_SIZE" in caplog.text
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(argparse.ArgumentTypeError, match="not integers"):
        parse_shard(None)


def test_run_refuses_a_missing_input_with_exit_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = ["run", "--quiet", "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")]
    with caplog.at_level(logging.ERROR, logger="latent_restore"):
        assert main([*argv, "--weights", str(BUILT_IN)]) == 2
    assert f"{tmp_path / 'nowhere'} does not exist" in caplog.text
    assert not (tmp_path / "out").exists()


def test_run_refuses_a_folder_that_is_not_a_weights_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    photos = tmp_path / "in"
    photos.mkdir()
    shutil.copy(REPO / "examples" / "old_photo.png", photos)
    argv = ["run", "--quiet", "--input", str(photos), "--output", str(tmp_path / "out")]
    with caplog.at_level(logging.ERROR, logger="latent_restore"):
        assert main([*argv, "--weights", str(tmp_path)]) == 2
    assert "is not a weights directory (no vae_a/config.json)" in caplog.text


def test_run_says_which_flags_have_no_effect(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = ["run", "--quiet", "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")]
    with caplog.at_level(logging.WARNING, logger="latent_restore"):
        main([*argv, "--weights", str(BUILT_IN), "--hr", "--no-faces", "--face-size", "512"])
    assert "--hr selects the patch-attention mapping" in caplog.text
    assert "--face-size has no effect with --no-faces" in caplog.text


def test_run_with_a_bad_shard_exits_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = ["run", "--quiet", "--input", str(REPO / "examples"), "--output", str(tmp_path / "out")]
    with caplog.at_level(logging.ERROR, logger="latent_restore"):
        assert main([*argv, "--weights", str(BUILT_IN), "--shard", "one/two"]) == 2
    assert "--shard wants K/N" in caplog.text


def test_convert_and_degrade_refuse_missing_sources_with_exit_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="latent_restore"):
        assert (
            main(["convert", "--quiet", "--official", str(tmp_path / "none"), "--out", str(tmp_path / "w")])
            == 2
        )
        assert (
            main(["degrade", "--quiet", "--input", str(tmp_path / "none"), "--output", str(tmp_path / "d")])
            == 2
        )
    assert f"{tmp_path / 'none'} does not exist" in caplog.text
    assert "input folder not found" in caplog.text
    assert not (tmp_path / "w").exists() and not (tmp_path / "d").exists()
