"""Do a target's wrong place comparisons follow the facts it states? (Not a test.)

    python scripts/smol_verdict_check.py EVAL.json [EVAL.json ...]

Reads `specvlm world eval-target` records. For each wrong "furthest / highest" answer
(qtype `extreme`) it parses the bands the answer itself gives each object ("the red square is
halfway down, ...") and asks whether the object it names is the one its own bands put furthest
(then it misread a band) or not (then the comparison step failed). For each wrong relation
answer ("The A is BAND and the B is BAND, so the A is left of the B, so yes.") it asks whether
the middle statement follows the two bands it states. The world asks both kinds only where the
true bands decide them (`qa_image.r_extreme`, `qa_image.q_relation`), so a right reading of the
image always allows the right verdict.
"""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

from specvlm.world.qa_image import AXIS_BANDS

RANK = {words: (axis, i) for axis, bands in AXIS_BANDS.items() for i, words in enumerate(bands)}
BAND = "|".join(map(re.escape, RANK))
SIDE_WORDS = {"left": "left", "right": "right", "highest": "top", "lowest": "bottom"}
RELATION_WORDS = {
    "left": ("left",),
    "right": ("right",),
    "above": ("above", "higher", "over"),
    "below": ("below", "beneath", "lower", "under"),
}


def extreme_kind(answer: str) -> str:
    if ", so the " not in answer:
        return "not parsed"
    facts, verdict = answer.split(", so the ", 1)
    stated = {
        n.lower(): RANK[b][1] for n, b in re.findall(rf"the ([a-z ]+?) is ({BAND})", facts, re.I)
    }
    head = verdict.split(":")[0]
    side = next((s for w, s in SIDE_WORDS.items() if w in head), None)
    if not stated or side is None:
        return "not parsed"
    named = verdict.split(" is ")[0].lower()
    best = (min if side in ("left", "top") else max)(stated.values())
    if named not in stated:
        return "names an object it did not place"
    if stated[named] != best:
        return "verdict contradicts its own bands"
    if list(stated.values()).count(best) > 1:
        return "its own bands tie"
    return "verdict follows its own bands (a band misread)"


def relation_kind(answer: str) -> str:
    m = re.match(rf"The (.+?) is ({BAND}) and the (.+?) is ({BAND}), so (.*)", answer)
    if not m:
        return "not parsed"
    (axis, r1), (_, r2) = RANK[m.group(2)], RANK[m.group(4)]
    if r1 == r2:
        return "its own bands tie"
    follows = ("left" if r1 < r2 else "right") if axis == "x" else ("above" if r1 < r2 else "below")
    middle = m.group(5).split(", so")[0]
    if any(w in middle for w in RELATION_WORDS[follows]):
        return "middle follows its own bands (a misread, or the yes/no after it)"
    return "middle contradicts its own bands"


def main() -> int:
    for path in sys.argv[1:]:
        items = json.loads(Path(path).read_text())["items"]
        for qtype, kind in (("extreme", extreme_kind), ("relation", relation_kind)):
            wrong = [i for i in items if i["qtype"] == qtype and i["ok"] is False]
            counts = collections.Counter(kind(i["answer"]) for i in wrong)
            print(f"{path}: {len(wrong)} wrong {qtype} answers")
            for k, n in counts.most_common():
                print(f"  {n:3d}  {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
