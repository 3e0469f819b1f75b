"""The base's pretraining stop: a right answer counts only with every step of its chain right."""

from reasonlab.evaluate.scoring import score_batch
from reasonlab.tasks import get_task
from reasonlab.template import prompt_for, read_replies
from reasonlab.train.pretrain import trigger_scores


def free_form_rows(task, problems, texts):
    """Rows as `evaluate_problems` keeps them for free-form trigger replies (read into the template)."""
    prompts = [prompt_for(p.question, "plain", "free-form", trigger=True) for p in problems]
    read, read_prompts = read_replies(texts, prompts, True)
    scored = score_batch(read, [p.answer for p in problems], task, read_prompts)
    return [
        {"question": p.question, "prompt": q, "completion": t, "read_as": r, **s}
        for p, q, t, r, s in zip(problems, prompts, texts, read, scored)
    ]


def test_a_right_answer_by_wrong_steps_does_not_count_toward_the_stop():
    task = get_task("chain", length=3)
    problems = task.problems(4, "test", seed=0)
    literal = problems[1].rationale.split(";")[0]  # a=13: the chain's first step, the literal
    name, value = literal.split("=")
    lucky = problems[1].rationale.replace(literal, f"{name}={int(value) + 1}", 1)  # a=14: not the question's
    texts = [
        f"{problems[0].rationale}\nThe answer is {problems[0].answer}.",  # right, every step right
        f"{lucky}\nThe answer is {problems[1].answer}.",  # the right answer after a wrong step
        f"{problems[2].rationale}\nThe answer is {int(problems[2].answer) + 1}.",  # steps right, answer wrong
        f"no idea\nThe answer is {int(problems[3].answer) + 1}.",
    ]
    rows = free_form_rows(task, problems, texts)
    assert [r["correct"] for r in rows] == [True, True, False, False]
    scores = trigger_scores(task, {"accuracy": 0.5, "rows": rows})
    assert scores == {"trigger_acc": 0.5, "trigger_steps_acc": 0.25}  # only the first counts
    # a template reply without a thought (its format broken) is neither right nor stepped right
    broken = {"question": problems[0].question, "prompt": "x\n", "completion": "7", "correct": False}
    scores = trigger_scores(task, {"accuracy": 0.4, "rows": [*rows, broken]})
    assert scores == {"trigger_acc": 0.4, "trigger_steps_acc": 0.2}


def test_a_task_that_cannot_check_steps_stops_on_its_answers():
    task = get_task("arithmetic", op="+", digits=1)
    problems = task.problems(2, "test", seed=0)
    rows = free_form_rows(task, problems, [f"The answer is {p.answer}." for p in problems])
    scores = trigger_scores(task, {"accuracy": 1.0, "rows": rows})
    assert scores == {"trigger_acc": 1.0}
