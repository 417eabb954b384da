"""`specvlm` command line: each verb is a thin call into the library.

Exit codes: 0 success, 2 bad usage or bad input (one line on stderr, no traceback), 1 internal
failure. Every argument is checked before anything heavy is loaded, and every output path before
the work whose result it will hold.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from specvlm import __version__
from specvlm.errors import InputError

BENCH_METHODS = "plain,eaglevlm,hf-plain,hf-assisted,hf-lookup"
SWEEP_METHODS = "plain,eaglevlm,specvlm"
BENCH_SUITES = ["world"]  # never mutated: `--suite` given or not is `is BENCH_SUITES`
ABLATE_SUITES = ["world-detailed"]


class _HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already says its default
    (None and False mean "not given" and are left out)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or not action.option_strings
            or any(action.default is v for v in (None, False, argparse.SUPPRESS))
        ):
            return text
        return f"{text} (default: %(default)s)".lstrip()

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings and self._get_help_string(action):
            action = copy.copy(action)  # argparse shows nothing of an option without help
            action.help = self._get_help_string(action)
        return super()._format_action(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own convention too)
        self.exit(2, f"specvlm: error: {message} (see `{self.prog} --help`)\n")


class Renamed(argparse.Action):
    """A hidden old spelling of a renamed option: it still works for one release, with a note."""

    def __init__(self, option_strings, dest, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(
            f"specvlm: note: {option_string} is now {self.new}; the old name will be removed "
            "in the next release",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


class _Repeatable(argparse.Action):
    """Like action="append", except that the first use replaces the default list."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        current = getattr(namespace, self.dest)
        current = [] if current is self.default else list(current)
        setattr(namespace, self.dest, [*current, values])


# ---- checks before the work -------------------------------------------------------------------
def check_output_folder(path: str | Path, flag: str = "--out") -> Path:
    """Create the folder (and its parents) and make sure a file can be written in it."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{flag} {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise InputError(f"cannot write into {flag} {folder}: {e.strerror or e}") from None
    return folder


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Make sure the file can be written (its folder is created) before the work that fills it."""
    file = Path(path)
    if file.is_dir():
        raise InputError(f"{flag} {file} is a folder; give a file path")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        if file.exists():
            with file.open("a"):
                pass
        else:
            with tempfile.TemporaryFile(dir=file.parent):
                pass
    except OSError as e:
        raise InputError(f"cannot write {flag} {file}: {e.strerror or e}") from None
    return file


def check_generation(
    *,
    max_new_tokens: int,
    temperatures: Sequence[float] = (0.0,),
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    seeds: Sequence[int | None] = (None,),
) -> None:
    """The library's own checks of the sampling arguments, run before any model is loaded."""
    from specvlm.config import SamplingConfig, check_seed
    from specvlm.errors import GenerationArgumentError

    if max_new_tokens < 1:
        raise GenerationArgumentError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    for temperature in temperatures:
        SamplingConfig(temperature, top_p, top_k, repetition_penalty)
    for seed in seeds:
        check_seed(seed)


# ---- arguments shared by several verbs --------------------------------------------------------
def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="target model folder (Hugging Face format); default: embedded")
    p.add_argument("--draft", help="draft head folder; default: the embedded target's draft")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    p.add_argument(
        "--dtype",
        default=None,
        help="float32 | bfloat16 | float16 | auto (on a CPU: bfloat16 where it is native and "
        "a one-off probe measured it faster, else float32); default: float32",
    )
    p.add_argument(
        "--tree",
        type=_tree,
        default=None,
        metavar="DEPTH,TOP_K,BUDGET",
        help="draft tree, e.g. 5,4,12; default: the one `bench --tune` chose on this machine, "
        "else 5,4,16",
    )


def _compressor_draft_arg(p: argparse.ArgumentParser, why: str) -> None:
    p.add_argument("--compressor-draft", metavar="DIR", help=why)


def _sweep_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sweep",
        metavar="N,N,..",
        help="the visual-token sweep: suites world-multi-N, N images per prompt (e.g. 1,4,8: "
        "64 / 256 / 512 visual tokens on the world targets), and the compressor's gain per count",
    )


def _tree(value: str):
    from specvlm.config import TreeConfig
    from specvlm.errors import GenerationArgumentError

    try:
        return TreeConfig.parse(value)
    except GenerationArgumentError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _max_new_tokens(p: argparse.ArgumentParser, default: int, why: str) -> None:
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=default,
        metavar="N",
        help=f"tokens to generate per answer (default: {default}: {why})",
    )


def _sampling_args(p: argparse.ArgumentParser, *, seed: int | None, seed_help: str) -> None:
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--seed", type=int, default=seed, help=seed_help)


def _load(args: argparse.Namespace):
    from specvlm.api import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from specvlm.embedded import embedded_target

        if args.target is None and embedded_target() is None:
            print(
                "note: no trained embedded models ship yet; using a tiny random LLaVA built "
                "in code (gibberish output, unrepresentative speed)",
                file=sys.stderr,
            )
        return load(
            target=args.target,
            draft=args.draft,
            device=args.device,
            dtype=args.dtype,
            tree=args.tree,
        )


# ---- verbs ------------------------------------------------------------------------------------
_STOPS = {
    "eos": "end of answer",
    "max_new_tokens": "--max-new-tokens reached",
    "context": "the model's context is full",
}


def cmd_generate(args: argparse.Namespace) -> int:
    check_generation(
        max_new_tokens=args.max_new_tokens,
        temperatures=[args.temperature],
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seeds=[args.seed],
    )
    engine = _load(args)
    kwargs = dict(
        images=args.image or None,
        max_new_tokens=args.max_new_tokens,
        video=args.video,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        speculative=not args.plain,
    )
    if args.json:
        out = engine.generate(args.prompt, **kwargs)
        print(
            json.dumps({"text": out.text, "token_ids": out.token_ids, "stats": out.stats.to_dict()})
        )
        return 0
    from specvlm.decoding.stats import SpecStats

    stats = SpecStats()
    for piece in engine.stream(args.prompt, stats=stats, **kwargs):
        print(piece.text, end="", flush=True)
    print()
    print(
        f"[{stats.new_tokens} tokens, tau {stats.tau:.2f}, {stats.tokens_per_s:.1f} tok/s, "
        f"ttft {stats.ttft_s * 1000:.0f} ms, stopped: {_STOPS[stats.stop_reason]}]",
        file=sys.stderr,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from specvlm.demo import run_demo

    return run_demo(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )


def cmd_train_draft(args: argparse.Namespace) -> int:
    from specvlm.draft.compressor import compressor_config
    from specvlm.train.distill import TrainConfig, train_draft

    compressor = None
    if args.compressor:
        compressor = compressor_config(
            args.compressor,
            args.compressor_operators,
            args.compressor_ratio,
            args.compressor_queries,
        )
    elif args.compressor_operators or args.compressor_ratio or args.compressor_queries != 2:
        raise InputError("--compressor-operators / -ratio / -queries need --compressor MODE")

    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip,
        w_logit=args.w_logit,
        w_feat=args.w_feat,
        feature_noise=args.feature_noise,
        precision=args.precision,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
        eval_n=args.eval_n,
        draft_vocab=args.draft_vocab,
        compressor=compressor,
        seed=args.seed,
    )
    check_output_folder(args.out)
    train_draft(
        args.target,
        args.data,
        args.out,
        cfg,
        image_folder=args.image_folder,
        eval_data=args.eval_data,
        resume=args.resume,
        on_bad_row=args.on_bad_row,
        regenerate=args.regenerate,
        init=args.init,
        progress=sys.stderr.isatty() and not args.no_progress,
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from specvlm.bench import methods as bm
    from specvlm.bench import runner
    from specvlm.bench.suites import load_suite
    from specvlm.layers import describe_linears

    if args.n is not None and args.n < 1:
        raise InputError(f"--n must be at least 1, got {args.n}")
    if args.samples < 1:
        raise InputError(f"--samples must be at least 1, got {args.samples}")
    if args.quick:
        args.n = 2 if args.n is None else args.n
        args.max_new_tokens = min(args.max_new_tokens, 48)
    check_generation(
        max_new_tokens=args.max_new_tokens,
        temperatures=args.temperature,
        top_p=args.top_p,
        seeds=[args.seed, args.seed + args.samples - 1],
    )
    if args.out:
        check_output_file(args.out)
    if args.plots:
        runner.require_matplotlib()
        check_output_folder(args.plots, "--plots")
    default_methods = args.methods == BENCH_METHODS
    if args.sweep:
        if args.suite is not BENCH_SUITES:
            raise InputError("give --suite or --sweep, not both (--sweep picks world-multi-N)")
        args.suite = _sweep_suites(args.sweep)
        args.methods = SWEEP_METHODS if default_methods else args.methods
    video_suites = all(str(s).startswith(("world-video", "world-events")) for s in args.suite)
    if args.target is None and video_suites:  # the embedded video target and its drafters
        from specvlm.embedded import (
            embedded_baseline,
            embedded_events_drafter,
            embedded_video_target,
        )

        if embedded_video_target() is None:
            raise InputError(
                "the world-video and world-events suites need a target that reads video: give "
                "--target VIDEO_LLAVA_DIR (no embedded video target ships in this install)"
            )
        args.target = str(embedded_video_target())
        args.assistant = args.assistant or embedded_baseline()
        args.events_drafter = args.events_drafter or embedded_events_drafter()
    items = [it for s in args.suite for it in load_suite(s, n=args.n, mc_rewrite=args.mc_rewrite)]
    engine = _load(args)
    if args.frames is not None:
        if not hasattr(engine.target, "set_num_frames"):
            raise InputError("--frames needs a target that reads video (e.g. Video-LLaVA)")
        engine.target.set_num_frames(args.frames)
    if (warning := runner.timing_warning(args.device)) is not None:
        print(warning, file=sys.stderr)
    names = args.methods.split(",")
    if args.assistant is None and args.target is None:  # the embedded pair: shipped baseline
        from specvlm.embedded import embedded_baseline

        args.assistant = embedded_baseline()
    if args.assistant is None and "hf-assisted" in names and default_methods:
        names.remove("hf-assisted")
        print("note: hf-assisted skipped (no --assistant model given)", file=sys.stderr)
    ctx = _bench_context(args, engine)
    if default_methods and ctx.events_dir is not None and all(it.events for it in items):
        names.insert(1, "events")  # world-events items and an event drafter at hand
    if default_methods:  # specvlm joins with a compressor draft; eaglevlm needs a plain one
        names, notes = bm.default_methods(names, ctx)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    methods = bm.build_methods(names, ctx)
    if args.tune:
        from specvlm.bench.tune import tune

        prompts = [(list(it.messages), list(it.images)) for it in items[:5]]
        res = tune(
            engine, prompts, max_new_tokens=args.max_new_tokens, progress=sys.stderr.isatty()
        )
        paper = res["paper_default"]
        print(
            f"chosen tree {res['tree']}: tau {res['tau']:.2f}, {res['tokens_per_s']:.1f} "
            f"tok/s, {res['speedup']:.2f}x plain ({res['plain_tokens_per_s']:.1f} tok/s); "
            f"paper default {paper['tree']}: tau {paper['tau']:.2f}, "
            f"{paper['tokens_per_s']:.1f} tok/s; gain {res['gain_over_paper_default']:.2f}x "
            f"(measured on {res['prompts']} prompts)\nwrote {res['path']}"
        )
        return 0
    config = {
        "dtype": str(engine.target.info.dtype).removeprefix("torch."),
        "linears": describe_linears(engine.target.model),  # which kernels multiply
        **({"draft_linears": describe_linears(engine.draft)} if engine.draft is not None else {}),
        "tree": vars(engine.tree),
        "max_new_tokens": args.max_new_tokens,
        "target": str(engine.target_dir),
        "draft": args.draft,
        "compressor_draft": args.compressor_draft,
        **({"frames": engine.target.num_frames} if hasattr(engine.target, "num_frames") else {}),
        **({"events_drafter": str(args.events_drafter)} if args.events_drafter else {}),
        **({"frame_drafter": str(args.frame_drafter)} if args.frame_drafter else {}),
        **({"cross_draft": str(args.cross_draft)} if args.cross_draft else {}),
        **({"question_drafter": str(args.question_drafter)} if args.question_drafter else {}),
    }
    records = runner.run_bench(
        methods,
        items,
        temperatures=args.temperature,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        top_p=args.top_p,
        seed=args.seed,
        config=config,
        progress=sys.stderr.isatty(),
    )
    rows = runner.summarise(records)
    print(runner.markdown_table(rows))
    if drafts := runner.draft_table(rows):
        print(f"\nThe drafts' costs (means per run):\n\n{drafts}")
    if args.sweep and (sweep := runner.sweep_table(runner.sweep_rows(rows))):
        print(f"\nThe compressor's gain per visual-token count:\n\n{sweep}")
    if args.out:
        runner.write_jsonl(records, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.plots:
        for path in runner.plot(records, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _sweep_suites(value: str) -> list[str]:
    """--sweep "1,4,8" -> the suites world-multi-1, -4, -8."""
    from specvlm.bench.suites import multi_images

    try:
        counts = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        counts = []
    if not counts:
        raise InputError(f"--sweep {value!r}: give images per prompt, e.g. 1,4,8")
    suites = [f"world-multi-{n}" for n in counts]
    for suite in suites:
        multi_images(suite)  # says the range when one is out of it
    return suites


def _bench_context(args: argparse.Namespace, engine):
    """The drafts of bench / ablate: the engine's (--draft, else the embedded one, which has a
    compressor), the embedded EagleVLM draft for eaglevlm with the embedded target, and
    --compressor-draft."""
    from specvlm.bench import methods as bm
    from specvlm.embedded import embedded_draft, embedded_eaglevlm_draft, embedded_target

    embedded = args.target is None and embedded_target() is not None
    shipped = embedded_draft() if embedded else None
    draft_dir = Path(args.draft) if args.draft else shipped
    return bm.BenchContext(
        engine=engine,
        target_dir=engine.target_dir,
        draft_dir=draft_dir,
        plain_draft=embedded_eaglevlm_draft() if embedded else None,
        compressor_draft=Path(args.compressor_draft) if args.compressor_draft else None,
        assistant_dir=Path(args.assistant) if getattr(args, "assistant", None) else None,
        events_dir=Path(args.events_drafter) if getattr(args, "events_drafter", None) else None,
        frame_dir=Path(args.frame_drafter) if getattr(args, "frame_drafter", None) else None,
        cross_dir=Path(args.cross_draft) if getattr(args, "cross_draft", None) else None,
        question_dir=(
            Path(args.question_drafter) if getattr(args, "question_drafter", None) else None
        ),
    )


def cmd_ablate(args: argparse.Namespace) -> int:
    from specvlm.bench import ablation, runner
    from specvlm.bench.suites import load_suite

    if args.n is not None and args.n < 1:
        raise InputError(f"--n must be at least 1, got {args.n}")
    ratios = ablation.parse_ratios(args.ratios)
    if args.quick:
        args.n = 2 if args.n is None else args.n
        args.max_new_tokens = min(args.max_new_tokens, 48)
    check_generation(max_new_tokens=args.max_new_tokens, seeds=[args.seed])
    if args.sweep and args.suite is not ABLATE_SUITES:
        raise InputError("give --suite or --sweep, not both (--sweep picks world-multi-N)")
    suites = _sweep_suites(args.sweep) if args.sweep else args.suite
    if args.out:
        check_output_file(args.out)
    items = [it for s in suites for it in load_suite(s, n=args.n)]
    engine = _load(args)
    if (warning := runner.timing_warning(args.device)) is not None:
        print(warning, file=sys.stderr)
    ctx = _bench_context(args, engine)
    ctx.head("specvlm")  # a compressor draft is at hand, or a message saying how to give one
    config = {
        "ablation": True,
        "tree": vars(engine.tree),
        "max_new_tokens": args.max_new_tokens,
        "target": str(engine.target_dir),
        "draft": args.draft,
        "compressor_draft": args.compressor_draft,
        "ratios": list(ratios),
    }
    records = ablation.run_ablation(
        ctx,
        items,
        ratios=ratios,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        config=config,
        progress=sys.stderr.isatty(),
    )
    rows = runner.summarise(records)
    print(ablation.ablation_table(rows))
    if pivot := ablation.pivot_table(rows):
        print(f"\nSpeedup over plain per visual-token count:\n\n{pivot}")
    if args.out:
        runner.write_jsonl(records, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    if bad := ablation.not_identical(rows):
        print(f"specvlm: error: output differs from plain's (or failed): {bad}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    from specvlm.serve.cli import add_parser as add_serve
    from specvlm.world.cli import register as register_world

    parser = _Parser(prog="specvlm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"specvlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="plain vs speculative decoding side by side")
    _max_new_tokens(p, 96, "8 prompts, each decoded twice, in about a minute on a CPU")
    _sampling_args(p, seed=0, seed_help="prompt i samples with seed SEED + i")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="answer a prompt about images or a video")
    p.add_argument("--prompt", required=True)
    p.add_argument("--image", action="append", help="image file (repeat for several)")
    p.add_argument(
        "--video",
        metavar="PATH",
        help="a video file (decoded by PyAV: pip install 'specvlm[video]') or a folder of frame "
        "images, for a target that reads video (Video-LLaVA)",
    )
    p.add_argument("--json", action="store_true", help="print text, token ids and stats as JSON")
    p.add_argument("--plain", action="store_true", help="plain decoding (no draft)")
    _engine_args(p)
    _max_new_tokens(p, 256, "the library's, Engine.generate")
    _sampling_args(p, seed=None, seed_help="sampling seed; default: fresh randomness")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("bench", help="methods side by side on benchmark suites")
    _engine_args(p)
    p.add_argument(
        "--assistant",
        help="small separate draft model folder for hf-assisted, assisted, frame and question "
        "(default with the embedded pair: its shipped 2-layer baseline)",
    )
    p.add_argument(
        "--events-drafter",
        help="event drafter folder for methods events / events-concurrent (specvlm world "
        "train-target --config events); bench them on the world-events suites",
    )
    p.add_argument(
        "--cross-draft",
        help="cross-modal EAGLE head folder for methods cross / cross-events (and their "
        "-concurrent forms): specvlm world train-target --config cross; world-events suites",
    )
    p.add_argument(
        "--frame-drafter",
        help="drafter folder for method frame (default: --assistant): the event drafter's "
        "recipe trained on the clip's middle frame (world train-target --config events "
        "--reads frame)",
    )
    p.add_argument(
        "--question-drafter",
        help="drafter folder for method question (default: --assistant): the same recipe "
        "trained on the question alone (--reads text)",
    )
    p.add_argument(
        "--frames",
        type=int,
        default=None,
        help="a video target samples each video to at most this many frames (default: the "
        "checkpoint's, 8 for Video-LLaVA): the frames sweep, one run per count",
    )
    _compressor_draft_arg(
        p,
        "the draft of method specvlm (a draft with an elastic visual "
        "compressor); with it the default methods add specvlm",
    )
    p.add_argument(
        "--suite",
        action=_Repeatable,
        default=BENCH_SUITES,
        help="suite name or file/folder (repeatable)",
    )
    p.add_argument(
        "--methods",
        default=BENCH_METHODS,
        help="comma-separated; the default adds specvlm when a compressor draft is given, and "
        f"is {SWEEP_METHODS} with --sweep",
    )
    _sweep_arg(p)
    p.add_argument(
        "--temperature", type=float, nargs="+", default=[0.0], help="one or more; 0 = greedy"
    )
    p.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--samples", type=int, default=1, help="samples per item at temperature > 0")
    _max_new_tokens(p, 128, "the setting of every run in docs/benchmarks.md; --quick: 48")
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="items per suite (>= 1); default: the suite's, 2 with --quick",
    )
    p.add_argument(
        "--mc-rewrite",
        action="store_true",
        help="ask multiple-choice questions for a detailed explanation (SpecVLM)",
    )
    p.add_argument("--seed", type=int, default=0, help="sample s of an item uses SEED + s")
    p.add_argument("--out", help="write one JSON record per run here (.jsonl)")
    p.add_argument("--plots", help="write PNG plots into this folder (needs matplotlib)")
    p.add_argument("--quick", action="store_true", help="a minute-scale run")
    p.add_argument(
        "--tune",
        action="store_true",
        help="choose the tree for this target on this machine (used by load())",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "ablate",
        help="the elastic visual compressor's ablation: each operator alone, each mode",
        description="For one compressor draft: the draft as trained, concat, each operator "
        "forced alone (prune / prune_norm / pool at each --ratios, conv and the resampler at "
        "their trained setting, text), eaglevlm (with a plain draft) and plain, interleaved per "
        "item, greedy. Forced rows reuse one head trained under the draft's own mode. Prints a "
        "Markdown table (τ, speedup over plain, draft prefill ms, draft KV tokens and bytes, "
        "identical); exit 1 if any output differs from plain's.",
    )
    _engine_args(p)
    _compressor_draft_arg(p, "the compressor draft to ablate; default: --draft when it has one")
    p.add_argument(
        "--suite",
        action=_Repeatable,
        default=ABLATE_SUITES,
        help="suite name or file/folder (repeatable)",
    )
    _sweep_arg(p)
    p.add_argument(
        "--ratios",
        default="4,9,16,25",
        metavar="R,R,..",
        help="the reduction ratios of the forced prune / prune_norm / pool rows",
    )
    _max_new_tokens(p, 128, "as bench; --quick: 48")
    p.add_argument("--n", type=int, default=None, help="items per suite; default: the suite's")
    p.add_argument("--seed", type=int, default=0, help="the bench's request seed (greedy)")
    p.add_argument("--out", help="write one JSON record per item and setting here (.jsonl)")
    p.add_argument("--quick", action="store_true", help="a minute-scale run: 2 items, 48 tokens")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("train-draft", help="train an EagleVLM draft head (online distillation)")
    p.add_argument("--target", required=True, help="target model folder")
    p.add_argument("--data", required=True, help="LLaVA-format .json / .jsonl")
    p.add_argument("--out", required=True, help="draft folder to write (checkpoints inside)")
    p.add_argument("--image-folder", help="image paths are relative to this; default: data's")
    p.add_argument("--eval-data", help="LLaVA-format file; tau is measured on its first questions")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8, help="global, over all processes")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--grad-clip", type=float, default=0.5, help="0 = off")
    p.add_argument("--w-logit", type=float, default=0.1, help="weight of the logit loss")
    p.add_argument("--w-feat", type=float, default=1.0, help="weight of the feature loss")
    p.add_argument("--feature-noise", type=float, default=0.0, help="U(-a, a) on input features")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps")
    p.add_argument("--eval-every", type=int, default=0, help="steps; 0 = at the end only")
    p.add_argument("--eval-n", type=int, default=16, help="questions of --eval-data")
    p.add_argument("--seed", type=int, default=0, help="initialisation, data order and noise")
    p.add_argument(
        "--draft-vocab",
        type=int,
        default=0,
        metavar="N",
        help="the draft scores only the target's N most frequent answer tokens; 0 = all",
    )
    p.add_argument(
        "--compressor",
        metavar="MODE",
        help="train an elastic visual compressor with the head (what the draft reads of images): "
        "select (gate picks one operator per input), mix, concat, or one operator: prune, "
        "prune_norm, pool, conv, resampler, text",
    )
    p.add_argument(
        "--compressor-operators", metavar="A,B,..", help="the branches of select / mix / concat"
    )
    p.add_argument(
        "--compressor-ratio",
        action="append",
        metavar="OP=R",
        help="reduction ratio of prune / prune_norm / pool / conv (repeatable), e.g. pool=4",
    )
    p.add_argument("--compressor-queries", type=int, default=2, help="the resampler's queries")
    p.add_argument(
        "--init",
        metavar="DRAFT",
        help="start from this trained draft folder's weights (same shape and compressor; the "
        "--draft-vocab map is counted on this data), e.g. the head of an earlier target version",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint (same settings only)",
    )
    p.add_argument(
        "--regenerate",
        action="store_true",
        help="replace the data's answers with the target's own greedy answers",
    )
    p.add_argument(
        "--on-bad-row",
        default="skip",
        choices=["skip", "stop"],
        help="skip and count a bad data row, or stop at it",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train_draft)

    add_serve(sub)
    register_world(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InputError as e:
        print(f"specvlm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specvlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
