"""The report's GRPO figure draws any reward: the method's on its whole scale, rewards of your own
(`--reward`, negative ones included) on the range they take, named in the title."""

from reasonlab.lab import plots


def _rows(rewards):
    return [
        {"step": i + 1, "reward/sampled_mean": r, "reward/accuracy": 0.5, "completions/mean_think_tokens": 9}
        for i, r in enumerate(rewards)
    ]


def _drawn(monkeypatch, tmp_path, rewards, config):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.plot_training(_rows(rewards), tmp_path / "t.png", config)
    (reward_axes, *_) = figures[0].axes
    return reward_axes.get_title(loc="left"), reward_axes.get_ylim()


def test_the_methods_reward_is_drawn_on_its_whole_scale(monkeypatch, tmp_path):
    title, (low, high) = _drawn(monkeypatch, tmp_path, [1.0, 2.5], {"format_points": 2, "correct_points": 1})
    assert title == "Reward (format 2 + correct 1)"
    assert (low, high) == (0, 1.03 * 3)


def test_a_negative_reward_of_your_own_is_drawn_where_it_is(monkeypatch, tmp_path):
    config = {"task": {"name": "data", "rewards": {"rewards": {"brevity": 0.5}, "default": False}}}
    title, (low, high) = _drawn(monkeypatch, tmp_path, [-4.0, -1.5, -2.0], config)
    assert title == "Reward (0.5·brevity)"
    assert low <= -4.0 and -1.5 <= high < 0


def test_the_method_and_your_rewards_are_named_together(monkeypatch, tmp_path):
    config = {"task": {"rewards": {"rewards": {"a": 1.0, "b": 2.0}, "default": True}}}
    title, (low, high) = _drawn(monkeypatch, tmp_path, [2.5, 5.5], config)
    assert " ".join(title.split()) == "Reward (format 2 + correct 1 + 1·a + 2·b)"
    assert high >= 5.5  # above the method's 3: not cut at its scale
