"""`judge_agreement`: an LLM judge's verdicts against the verifier's, on samples of known
correctness, with tiny scripted judges (bigram LMs that always write one score, and a stand-in
endpoint that scores by a phrase). Run: pytest tests/train/test_judge.py"""

import pytest

from reasonlab.model import new_builtin
from reasonlab.remote import RemoteGenerator
from reasonlab.tasks import get_task
from reasonlab.train.rationales import Judge, judge_agreement
from tests.conftest import BigramLM

_, TOK = new_builtin()
ID = {s: TOK.encode(s)[0] for s in [":", "9", "2"]}
RUBRIC = "Score 10 if the response's final answer is correct, 0 if it is wrong."
TASK = get_task("arithmetic", op="+", digits=1)
PROBLEMS = TASK.problems(7, seed=0)


def scorer(score: str):
    """A judge model that writes `score` after the judge prompt's closing ':' and then stops."""
    return BigramLM(len(TOK), {ID[":"]: ID[score]}, default=TOK.eos_id)


def samples():
    """One sample per problem, each right or wrong by construction: free text with "the answer is",
    a template reply, a reply with no answer to read, an answer read as the last number."""
    texts, right = [], []
    for i, p in enumerate(PROBLEMS):
        a, b = p.question.split("+")
        wrong = str(int(p.answer) + 1)
        text, ok = [
            (f"{a} + {b} = {p.answer}. So the final answer is {p.answer}.", True),
            (f"{a} + {b} = {wrong}. So the final answer is {wrong}.", False),
            (f"<think>{a} plus {b}</think><answer>{p.answer}</answer>", True),
            ("I cannot tell.", False),  # no answer to read: wrong
            (f"{a}+{b} makes {p.answer}", True),  # the last number
            (f"<think>{a} plus {b}</think><answer>{wrong}</answer>", False),
            (f"Adding, the answer is {p.answer}.", True),
        ][i]
        texts.append(text)
        right.append(ok)
    return texts, right


def phrase_judge():
    """A stand-in judge endpoint that scores 9 a response saying "answer is" and 1 any other: it
    trusts a confident phrase, right or wrong. `.seen` holds the prompts it was given."""

    class Phrase(RemoteGenerator):
        def complete(self, prompts, **_):
            self.seen = list(prompts)
            return [" 9" if "answer is" in p.split("\nResponse: ")[1] else " 1" for p in prompts]

    return Phrase("http://127.0.0.1:9")


def test_a_judge_that_keeps_all_has_the_verifiers_precision_and_full_recall():
    texts, right = samples()
    assert sum(right) == 4
    got = judge_agreement(Judge(scorer("9"), TOK, RUBRIC), TASK, PROBLEMS, texts)
    assert got == {
        "samples": 7,
        "judge_kept": 7,
        "verifier_correct": 4,
        "both": 4,
        "precision": pytest.approx(4 / 7),
        "recall": 1.0,
        "agreement": pytest.approx(4 / 7),
    }


def test_a_judge_that_keeps_none_has_no_precision_and_zero_recall():
    texts, _ = samples()
    got = judge_agreement(Judge(scorer("2"), TOK, RUBRIC), TASK, PROBLEMS, texts)
    assert got == {
        "samples": 7,
        "judge_kept": 0,
        "verifier_correct": 4,
        "both": 0,
        "precision": None,
        "recall": 0.0,
        "agreement": pytest.approx(3 / 7),
    }


def test_a_judge_fooled_by_a_phrase_is_counted_against_the_verifier():
    """Kept: samples 0, 1, 6 (they say "answer is"); correct: 0, 2, 4, 6; both: 0, 6; the same
    verdict on 0, 3, 5, 6. The judge reads each sample as written, not its template rewrite."""
    texts, _ = samples()
    endpoint = phrase_judge()
    judge = Judge(endpoint, TOK, RUBRIC)
    got = judge_agreement(judge, TASK, PROBLEMS, texts)
    assert got == {
        "samples": 7,
        "judge_kept": 3,
        "verifier_correct": 4,
        "both": 2,
        "precision": pytest.approx(2 / 3),
        "recall": 0.5,
        "agreement": pytest.approx(4 / 7),
    }
    assert endpoint.seen == [judge.prompt(p.question, t) for p, t in zip(PROBLEMS, texts)]


def test_no_correct_sample_leaves_recall_undefined_and_lengths_must_match():
    texts, right = samples()
    wrong = [i for i, ok in enumerate(right) if not ok]
    got = judge_agreement(
        Judge(scorer("9"), TOK, RUBRIC), TASK, [PROBLEMS[i] for i in wrong], [texts[i] for i in wrong]
    )
    assert got == {
        "samples": 3,
        "judge_kept": 3,
        "verifier_correct": 0,
        "both": 0,
        "precision": 0.0,
        "recall": None,
        "agreement": 0.0,
    }
    with pytest.raises(ValueError, match="one text per problem"):
        judge_agreement(Judge(scorer("9"), TOK, RUBRIC), TASK, PROBLEMS, texts[:-1])
