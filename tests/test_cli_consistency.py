"""One CLI: every verb builds and has --help, one name per concept, defaults shown in --help."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

import specvlm
from specvlm.cli import build_parser, main

SRC = Path(specvlm.__file__).parent


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _all_commands() -> list[tuple[str, ...]]:
    """Every verb and every `world` subcommand, as argv prefixes."""
    out = []
    for name, sub in _subparsers(build_parser()).items():
        out.append((name,))
        out += [(name, inner) for inner in _subparsers(sub)]
    return out


COMMANDS = _all_commands()


def test_every_verb_of_the_contract_is_there():
    names = {c[0] for c in COMMANDS}
    assert {"demo", "generate", "bench", "train-draft", "serve", "world"} <= names
    world = {c[1] for c in COMMANDS if len(c) == 2}
    assert world == {"make", "show", "tokenizer", "train-target", "eval-target"}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_works_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: specvlm " + " ".join(command))


def test_no_command_is_dropped_silently_on_an_import_error():
    for path in ("cli.py", "world/cli.py"):
        text = (SRC / path).read_text()
        assert not re.search(r"except ImportError:\s*pass", text), path


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"specvlm {specvlm.__version__}"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_default_is_visible_in_help(command):
    parser = build_parser()
    for name in command:
        parser = _subparsers(parser)[name]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            continue
        text = formatter._format_action(action)  # the option's lines in --help
        assert "default" in text, (command, action.option_strings, text)


def _options(command: tuple[str, ...]) -> dict[str, argparse.Action]:
    parser = build_parser()
    for name in command:
        parser = _subparsers(parser)[name]
    return {s: a for a in parser._actions for s in a.option_strings if a.help != argparse.SUPPRESS}


def test_a_target_folder_is_always_called_target():
    for command in COMMANDS:
        opts = _options(command)
        assert "--model" not in opts, command
        for flag, action in opts.items():
            if "target model folder" in (action.help or ""):
                assert flag == "--target", (command, flag)
    verbs = [("generate",), ("bench",), ("train-draft",), ("serve",), ("world", "eval-target")]
    for command in verbs:
        assert "--target" in _options(command)


def test_every_max_new_tokens_default_says_why():
    for command in COMMANDS:
        action = _options(command).get("--max-new-tokens")
        if action is not None:
            assert re.search(rf"default: {action.default}: \w", action.help), command


def test_world_first_sample_is_start_and_old_spellings_still_work(capsys):
    parser = build_parser()
    args = parser.parse_args(
        ["world", "make", "--split", "val", "--n", "1", "--out", "o", "--start", "3"]
    )
    assert args.start == 3
    args = parser.parse_args(["world", "show", "--seed", "5"])
    assert args.start == 5
    args = parser.parse_args(["world", "eval-target", "--model", "m"])
    assert args.target == "m"
    err = capsys.readouterr().err
    assert "--seed is now --start" in err and "--model is now --target" in err
    assert "--seed" not in _options(("world", "make")) and "--start" in _options(("world", "show"))


def test_bench_defaults_live_in_the_parser():
    args = build_parser().parse_args(["bench"])
    assert args.suite == ["world"] and args.methods.split(",")[0] == "plain"
    args = build_parser().parse_args(["bench", "--suite", "a", "--suite", "b"])
    assert args.suite == ["a", "b"]
