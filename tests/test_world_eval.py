"""eval-target's scoring rules on hand-written answers, and one run per family on a tiny target."""

from __future__ import annotations

import shutil

import pytest

from specvlm.world import evaluate as ev
from specvlm.world import grammar
from specvlm.world.language import make_record
from tests.test_world_train import run  # noqa: F401  (the tiny trained target, a module fixture)

MC = {"qtype": "mc_color", "answer": "B", "answer_kind": "letter", "answer_text": "red"}


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("B) red", "B"),
        ("B: red", "B"),
        ("B. The circle is red.", "B"),
        ("(B) Red. The circle is red.", "B"),
        ("The answer is (C).", "C"),
        ("Answer: D", "D"),
        ("I pick option A because it is red.", "A"),
        ("Red, so the answer is B. The circle is red.", "B"),  # the references' two forms
        ("Red: option (B). The circle is red.", "B"),
        ("A red circle, so the answer is C.", "C"),
        ("A red circle.", None),  # the article, not an option
        ("Red.", None),
        ("b. red", None),  # letters are capitals, as the options are written
        ("", None),
    ],
)
def test_mc_letter(text, letter):
    assert ev.mc_letter(text) == letter


def test_multiple_choice_is_scored_by_its_letter():
    assert ev.score("multiple_choice", MC, "B")  # letter only
    assert ev.score("multiple_choice", MC, "(B) Red. The circle is red.")  # letter + content
    assert not ev.score("multiple_choice", MC, "(A) Red. The circle is red.")  # wrong letter
    assert not ev.score("multiple_choice", MC, "Red. The circle is red.")  # content, no letter
    assert ev.score("multiple_choice", MC, "Red, so the answer is B. The circle is red.")
    assert not ev.score("multiple_choice", MC, "Red: option (C). The circle is red.")
    assert grammar.check_answer(MC, "Red: option (B).")  # check_answer reads letters the same way
    assert not grammar.check_answer(MC, "Red: option (C).")
    # the content check is a diagnostic beside the score: right content under a wrong letter
    assert ev.mc_content(MC, "(A) Red. The circle is red.")
    assert ev.mc_content(MC, "B. The circle is red, so the other colors do not match it.")
    assert not ev.mc_content(MC, "(B) Blue.")
    assert not ev.mc_content(MC, "B")
    assert ev.mc_content(MC, "Red, so the answer is C.") and not ev.mc_content(
        MC, "Blue: option (B)."
    )


def test_option_letter_at_says_where_the_letter_stands():
    assert grammar.option_letter_at("A red circle, so the answer is C.") == ("C", 31)
    assert grammar.option_letter_at("(B) Red.") == ("B", 1)
    assert grammar.option_letter_at("Red.") is None


def test_reasoning_is_scored_by_its_verdict_sentence():
    size = {"qtype": "compare_size", "answer": "red circle", "answer_kind": "object"}
    assert ev.verdict("The red circle is larger. It covers more.") == "The red circle is larger."
    assert ev.score("reasoning", size, "The red circle is larger. It covers more of the image.")
    assert not ev.score(
        "reasoning", size, "The blue square is larger. It covers more than the red circle."
    )
    # a right value only in the explanation does not count
    more = {"qtype": "compare_count", "answer": "yes", "answer_kind": "yesno"}
    assert ev.score("reasoning", more, "Yes. There are two circles and one square.")
    assert not ev.score("reasoning", more, "No. There are two circles, so yes.")
    edge = {"qtype": "edge", "answer": "left", "answer_kind": "word", "alternatives": ["right"]}
    assert ev.score("reasoning", edge, "It is closer to the left edge. Not the right one.")
    assert not ev.score("reasoning", edge, "It is closer to the right edge. The left one is far.")
    plus = {"qtype": "arithmetic", "answer": "3", "answer_kind": "number"}
    assert not ev.score("reasoning", plus, "There would be many. The image has 3 now.")


def test_reasoning_that_concludes_last_is_scored_by_its_conclusion():
    size = {
        "qtype": "compare_size",
        "answer": "blue square",
        "answer_kind": "object",
        "conclusion": True,
    }
    facts = "The red circle is small, while the blue square is large"
    assert ev.verdict(f"{facts}, so the blue square is larger. Clearly.", size) == (
        "the blue square is larger."
    )
    assert ev.score("reasoning", size, f"{facts}, so the blue square is larger.")
    # the first object named is the wrong one: only the conclusion counts
    assert not ev.score("reasoning", size, f"{facts}, so the red circle is larger.")
    # a verdict-first answer (the wording before ANSWERS_VERSION 3) is still read by its first
    # sentence, also when an explanation after it says ", so "
    assert ev.score("reasoning", size, "The blue square is larger. It is big, so it wins.")
    assert not ev.score("reasoning", size, "The red circle is larger. It is big, so it wins.")
    more = {"qtype": "compare_count", "answer": "yes", "answer_kind": "yesno", "conclusion": True}
    assert ev.score("reasoning", more, "There are two circles and one square, so yes: more.")
    assert not ev.score("reasoning", more, "There are two circles and one square, so no.")
    assert ev.score("reasoning", more, "Yes. There are two, so there are more circles.")
    plus = {"qtype": "arithmetic", "answer": "3", "answer_kind": "number", "conclusion": True}
    assert ev.score("reasoning", plus, "The image has 2 circles, so there would be 3 circles.")
    assert not ev.score("reasoning", plus, "The image has 3 circles, so there would be 4.")


def test_not_in_the_image_is_scored_by_its_letter_after_the_facts():
    meta = {
        "qtype": "mc_absent",
        "answer": "C",
        "answer_kind": "letter",
        "answer_text": "green star",
        "conclusion": True,
    }
    right = "The image shows a red circle and a blue square, but there is no green star, so the answer is C."
    assert ev.score("multiple_choice", meta, right) and ev.mc_content(meta, right)
    wrong = "The image shows a red circle, but there is no blue square: option (A)."
    assert not ev.score("multiple_choice", meta, wrong) and not ev.mc_content(meta, wrong)


def test_multiturn_turns_are_scored_by_their_own_rule():
    count = {"qtype": "count", "answer": "2", "answer_kind": "number"}
    # a conversation question: its first number anywhere in the answer
    assert ev.score("multiturn", count, "I can see two shapes.")
    assert not ev.score("multiturn", count, "I can see three shapes.")
    # a reasoning question asked as a turn: its verdict sentence
    more = {"qtype": "compare_count", "answer": "no", "answer_kind": "yesno"}
    assert ev.score("multiturn", more, "No. There are no circles.")
    assert not ev.score("multiturn", more, "Yes. No, wait.")


def test_reasoning_qtypes_are_the_reasoning_familys():
    reasoning = {make_record("train", i, "reasoning")["meta"]["qtype"] for i in range(300)}
    conversation = {make_record("train", i, "conversation")["meta"]["qtype"] for i in range(300)}
    assert reasoning == ev.IMAGE_REASONING_QTYPES
    assert not conversation & ev.REASONING_QTYPES
    clip = {make_record("train", i, "reasoning", "video")["meta"]["qtype"] for i in range(300)}
    talk = {make_record("train", i, "conversation", "video")["meta"]["qtype"] for i in range(300)}
    assert clip == ev.CLIP_REASONING_QTYPES
    assert talk & ev.REASONING_QTYPES <= {"count_moving"}  # scored alike either way


def test_multiturn_items_carry_the_reference_history():
    from specvlm.world.train_target import chat_messages

    closed, describe = ev.make_items("test", 4, 32)
    rec = make_record("test", 0, "multiturn")
    turns = [it for it in closed if it.family == "multiturn" and it.index == 0]
    assert [it.turn for it in turns] == list(range(1, len(rec["meta"]["turns"]) + 1))
    last = turns[-1]
    # the prompt is the training chat up to the last question: reference answers in between
    assert last.messages == chat_messages(rec)[:-1]
    assert last.reference == rec["conversations"][-1]["value"]
    assert sum(it.family == "reasoning" for it in closed) == 4 and len(describe) == 4


def _check_report(r: dict, n: int) -> None:
    fam = r["families"]
    assert list(fam)[:4] == ["conversation", "multiple_choice", "reasoning", "multiturn turn 1"]
    assert fam["conversation"][1] == fam["multiple_choice"][1] == fam["reasoning"][1] == n
    assert sum(k for _, k in fam.values()) == r["closed_count"] == len(r["items"]) - n
    right = sum(ok for ok, _ in fam.values())
    assert r["closed_accuracy"] == pytest.approx(right / r["closed_count"])
    items = r["items"]
    assert all({"question", "reference", "answer", "ok"} <= set(it) for it in items)
    assert sum(it["ok"] for it in items if it["family"] == "detailed") == pytest.approx(
        n * r["description_coverage"]
    )


def test_eval_reports_every_family(run):  # noqa: F811
    r = ev.evaluate_target(run[0] / "model", "test", n=3, max_description_tokens=8, progress=False)
    _check_report(r, 3)
    report = ev.format_report(r)
    for row in (
        "conversation",
        "multiple choice",
        "reasoning",
        "multiturn turn 2",
        "all closed questions",
    ):
        assert row in report


def test_eval_runs_with_a_chatml_template(run, tmp_path):  # noqa: F811
    """A target whose template is world-smol's ChatML runs too (here on the world tokenizer,
    which adds its <s> in front of the ChatML text, as it would of any text)."""
    from specvlm.smol import CHAT_TEMPLATE

    folder = tmp_path / "chatml"
    shutil.copytree(run[0] / "model", folder)
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    model, processor = ev.load(folder)
    r = ev.evaluate_model(model, processor, "test", 2, max_description_tokens=4, progress=False)
    _check_report(r, 2)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")


def test_cli_writes_every_item(run, tmp_path, capsys):  # noqa: F811
    import json

    from specvlm.cli import main

    out = tmp_path / "eval.json"
    code = main(["world", "eval-target", "--target", str(run[0] / "model"), "--n", "1",
                 "--threads", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert "multiple choice" in capsys.readouterr().out
    items = json.loads(out.read_text())["items"]
    assert {it["family"] for it in items} == {*ev.CLOSED_FAMILIES, "detailed"}


def test_answers_that_give_facts_first_get_the_longer_budget():
    """_jobs: reasoning and every other answer with meta "conclusion" (relation, corner and
    how-many-objects of conversation and multiturn, "NOT in the image") get REASONING_TOKENS;
    the rest CLOSED_TOKENS. Even on the hard split (up to eight objects) the part of a reference
    answer that is scored fits its budget, so none is cut before its verdict: all of a long
    answer, the first sentence of a short one (a multiple-choice letter comes in it), at 1.3
    tokens a word (SmolLM2's tokenizer: 1.12-1.2 on these answers, 102 tokens at most for the
    longest, a "closest" answer over eight objects, measured 2026-12-03)."""
    closed, describe = ev.make_items("hard", 40, 32)
    items, jobs = ev._jobs(closed, describe, 360)
    budget = {k: b for ks, b in jobs for k in ks}
    assert sorted(budget) == list(range(len(items)))
    seen = set()
    for k, it in enumerate(closed):
        long = bool(it.meta.get("conclusion")) or it.meta["qtype"] in ev.REASONING_QTYPES
        assert budget[k] == (ev.REASONING_TOKENS if long else ev.CLOSED_TOKENS), it.meta
        scored = it.reference if long else it.reference.split(". ")[0]
        assert len(scored.split()) * 1.3 <= budget[k], (it.meta["qtype"], it.reference)
        if it.meta.get("conclusion") and it.family in ("conversation", "multiturn"):
            seen.add(it.meta["qtype"])
    assert {"relation", "corner", "count"} <= seen
