"""`config.flat_options`: a command's options as one flat dataclass made of parts, with no base
classes; a name two parts declare is refused, a command's own default keeps its place, each part's
checks run on the command's values, and `narrow` gives a part back."""

import dataclasses
from dataclasses import dataclass, field

import pytest

from reasonlab.config import build_config, flat_options, narrow
from reasonlab.errors import UserError
from reasonlab.options import RLOptions
from reasonlab.rl import GRPOConfig


@dataclass
class Where:
    out: str = "runs/x"
    device: str = "cpu"


@dataclass
class How:
    steps: int = field(default=10, metadata={"min": 1})
    lr: float = 1e-3

    def __post_init__(self):
        if self.lr > 1:
            raise UserError(f"lr {self.lr} > 1")


@dataclass
class Clash:
    device: str = "cuda"


def test_the_options_are_the_parts_fields_flat_in_order_with_the_commands_own():
    Options = flat_options(
        "Options", Where, How, doc="test", out=field(default="runs/mine"), tag=(str, field(default="t"))
    )
    assert Options.__mro__ == (Options, object)
    assert [f.name for f in dataclasses.fields(Options)] == ["out", "device", "steps", "lr", "tag"]
    opts = Options()
    assert (opts.out, opts.steps, opts.tag) == ("runs/mine", 10, "t")
    assert narrow(Options(steps=3), How) == How(steps=3)


def test_a_name_two_parts_declare_is_refused_not_silently_overridden():
    with pytest.raises(TypeError, match="Where and Clash both set 'device'"):
        flat_options("Options", Where, Clash, doc="test")
    with pytest.raises(TypeError, match="'nothing' is in none of its parts"):
        flat_options("Options", Where, doc="test", nothing=field(default=1))


def test_each_parts_checks_run_on_the_commands_values():
    Options = flat_options("Options", Where, How, doc="test")
    with pytest.raises(UserError, match="lr 2.0 > 1"):
        Options(lr=2.0)
    with pytest.raises(UserError, match="--steps must be >= 1"):
        build_config(Options, steps=0)


def test_rl_options_refuse_what_grpo_config_refuses():
    with pytest.raises(UserError, match="--length-target-max 10 needs"):
        build_config(RLOptions, length_target=20, length_target_max=10)
    opts = build_config(RLOptions, lr=5e-5, model="m")
    assert narrow(opts, GRPOConfig) == GRPOConfig(lr=5e-5)
