"""Grading a model's response against a benchmark's gold answer.

A response is graded in two steps: `extract_answer` pulls the final answer out of the
reasoning text, and `is_equivalent` decides whether it names the same mathematical
object as the gold answer (math-verify does the symbolic work). `grade` combines both,
with an exact-integer mode for AIME-style benchmarks.

Conventions every caller should know:

- A percent sign is a unit, like "cm": it is dropped before comparing, so "50\\%" == "50",
  and "50\\%" != "0.5" (a model asked for a percentage that answers 0.5 is wrong).
- Units and words after a plain number are dropped ("5 cm", "\\text{5 apples}" == "5").
- Comparisons run without math-verify's signal.alarm timeouts, so they are safe in worker
  threads; a caller that needs a time bound on a pathological expression must impose it
  (e.g. grade in a process pool with a timeout).
"""

from __future__ import annotations

import logging

import re
from dataclasses import dataclass
from typing import Callable, Literal

from math_verify import parse, verify

# We disable math-verify's signal-based timeouts on purpose (thread safety); its warning
# about that on every call is noise.
logging.getLogger("math_verify").setLevel(logging.ERROR)

GradeKind = Literal["math", "integer"]
GRADE_KINDS = ("math", "integer")

_BOX_COMMANDS = ("\\boxed", "\\fbox")

# "The final answer is $x$", "answer: x", "**Answer:** x": the value runs to the end of
# the math span, the sentence, or the line, whichever the phrase uses.
_ANSWER_PHRASE = re.compile(
    r"answer\s*(?:is|:)\s*:?[\s*]*"
    r"(?:\$(?P<dollar>[^$]+)\$|\\\((?P<paren>.+?)\\\)|(?P<plain>[^\n]*?)(?=\.\s|\.?$|\n))",
    re.IGNORECASE | re.MULTILINE,
)
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")

_PERCENT = re.compile(r"\\%|%|\s*\bpercent(?:age)?\b", re.IGNORECASE)
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textit|mbox)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|~")
# A plain number followed only by unit-like words ("5 cm", "12 apples", "3 m^2").
_NUMBER_WITH_UNITS = re.compile(
    r"(?P<number>[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+)"
    r"(?:\s+[A-Za-z]+\.?(?:\^\{?\d\}?)?)+"
)
_INTEGER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.0*)?")


@dataclass(frozen=True)
class GradeResult:
    """The answer extracted from a response (None when none was found) and its verdict."""

    pred: str | None
    correct: bool


def extract_boxed(text: str) -> str | None:
    """Return the content of the last complete `\\boxed{...}` or `\\fbox{...}` in `text`.

    Braces are matched, so nested groups (`\\boxed{\\frac{1}{2}}`) come back whole. The
    single-token form `\\boxed 5` is read up to the next whitespace or `$`, without
    trailing sentence punctuation. A box whose braces never close (a truncated
    generation) is skipped in favour of the one before it. Returns None when there is
    no box; the content is stripped of surrounding whitespace and may be empty.
    """
    end = len(text)
    while True:
        start = max(text.rfind(command, 0, end) for command in _BOX_COMMANDS)
        if start < 0:
            return None
        command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
        content = _box_content(text, start + len(command))
        if content is not None:
            return content.strip()
        end = start


def _box_content(text: str, after_command: int) -> str | None:
    """Content of the box whose command ends at `after_command`, or None if it is not one."""
    rest = text[after_command:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        open_at = after_command + (len(rest) - len(stripped))
        depth = 0
        for i in range(open_at, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[open_at + 1 : i]
        return None
    # `\boxed 5` needs the space; `\boxeds` would be a different command.
    if not rest[:1].isspace() or not stripped:
        return None
    token = re.match(r"[^\s$]+", stripped)
    return token.group(0).rstrip(".,;:") if token else None


def extract_answer(text: str) -> str | None:
    """Return the final answer stated in a response, or None if it states none.

    Tried in order, the first that finds something wins:
    1. the last box (`extract_boxed`), if non-empty;
    2. the last "answer is X" / "answer: X" phrase (case-insensitive; X may be a `$...$`
       span, and ends at the sentence or line);
    3. the last number in the text (integer, decimal, `a/b`; thousands commas removed).
    """
    boxed = extract_boxed(text)
    if boxed:
        return boxed
    phrases = [m for m in _ANSWER_PHRASE.finditer(text) if _phrase_value(m)]
    if phrases:
        return _phrase_value(phrases[-1])
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1].replace(",", "")
    return None


def _phrase_value(match: re.Match[str]) -> str:
    value = match.group("dollar") or match.group("paren") or match.group("plain") or ""
    return value.strip().strip("*").strip()


def _normalize(answer: str) -> str:
    """The answer with math delimiters, percent signs, text wrappers and units removed."""
    s = answer.strip()
    for opening, closing in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(opening) + len(closing) and s.startswith(opening) and s.endswith(closing):
            s = s[len(opening) : -len(closing)].strip()
            break
    s = _PERCENT.sub("", s)
    s = _TEXT_COMMAND.sub(r" \1 ", s)
    s = _SPACING.sub(" ", s).strip()
    unit_match = _NUMBER_WITH_UNITS.fullmatch(s)
    if unit_match:
        s = unit_match.group("number")
    return s.strip().rstrip(".").strip()


def _canonical_string(answer: str) -> str:
    """A spelling-insensitive form for the plain string comparison."""
    s = answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "")
    return re.sub(r"\s+", "", s).lower()


def is_equivalent(pred: str, gold: str) -> bool:
    """Whether the predicted answer names the same mathematical object as the gold answer.

    Both sides are answers, not whole responses (use `extract_answer` first). After
    normalisation (see the module docstring on percents and units), two answers are
    equivalent if their canonical strings are equal, or if math-verify parses both and
    finds them equal: fractions/decimals (1/2 == 0.5 == \\frac12), simplified radicals,
    tuples, sets and intervals (endpoints' openness matters), `x = 5` vs `5`. Answers
    math-verify cannot parse fall back to the string comparison only. Never raises:
    junk or non-string input gives False.
    """
    try:
        if not isinstance(pred, str) or not isinstance(gold, str):
            return False
        pred_norm, gold_norm = _normalize(pred), _normalize(gold)
        if not pred_norm or not gold_norm:
            return False
        if _canonical_string(pred_norm) == _canonical_string(gold_norm):
            return True
        # Bare LaTeX parses to nothing unless it sits in a math environment.
        gold_parsed = parse(f"${gold_norm}$", parsing_timeout=None)
        pred_parsed = parse(f"${pred_norm}$", parsing_timeout=None)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:
        return False


def _as_integer(answer: str) -> int | None:
    """The integer an answer states ("033", "33.0", "\\frac{66}{2}"), or None if it is not one."""
    s = _normalize(answer).replace(" ", "")
    if _INTEGER.fullmatch(s):
        return int(s.replace(",", "").split(".")[0])
    try:
        parsed = parse(f"${s}$", parsing_timeout=None)
    except Exception:
        return None
    for expr in parsed:
        if getattr(expr, "is_Integer", False):
            return int(expr)
    return None


def same_integer(a: str, b: str) -> bool:
    """Whether both answers state the same integer ("033", "33.0" and "\\frac{66}{2}" all state
    33); False when either states none."""
    value = _as_integer(a) if isinstance(a, str) else None
    return value is not None and isinstance(b, str) and value == _as_integer(b)


def equivalence(kind: GradeKind) -> Callable[[str, str], bool]:
    """The answer comparison of a grade kind: `is_equivalent` (math) or `same_integer` (integer)."""
    if kind not in GRADE_KINDS:
        raise ValueError(f"grade kind must be one of {GRADE_KINDS}, got {kind!r}")
    return same_integer if kind == "integer" else is_equivalent


def check_gold(gold: str, kind: GradeKind) -> None:
    """Raises ValueError for a gold answer `kind` cannot judge against (a dataset error, not a
    model error): integer grading needs a gold answer stating an integer."""
    equivalence(kind)
    if kind == "integer" and _as_integer(gold) is None:
        raise ValueError(f"integer grading needs an integer gold answer, got {gold!r}; use data.grade=math "
                         "for this benchmark")


def is_correct(pred: str | None, gold: str, kind: GradeKind = "math") -> bool:
    """An extracted answer (None: nothing found) judged against the gold answer."""
    return pred is not None and equivalence(kind)(pred, gold)


def grade(response: str, gold: str, kind: GradeKind = "math") -> GradeResult:
    """Extract the answer from `response` and judge it against `gold`.

    kind="math": `is_equivalent`. kind="integer" (AIME): the answer must state an integer
    equal to the gold integer ("033" and "33.0" match 33; "33.5" matches nothing).
    Raises ValueError for an unknown kind, or in integer mode for a gold answer that is
    not an integer (a dataset error, not a model error).
    """
    check_gold(gold, kind)
    pred = extract_answer(response) if isinstance(response, str) else None
    return GradeResult(pred=pred, correct=is_correct(pred, gold, kind))
