"""The wandb sweep configs: every parameter value, passed the way the wandb agent passes it, is accepted by
the real CLI and lands in the instantiated model."""

from __future__ import annotations

import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args, load_sweep_config

from conftest import ROOT
from dfn.cli import main

SWEEPS = sorted((ROOT / "experiments" / "sweeps").glob("*.yaml"))


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The command line the wandb agent runs for one point (wandb_agent.Agent: macros replaced in order,
    ``${args}`` from wandb's own create_sweep_command_args)."""
    macros = {"env": [], "interpreter": [], "program": [sweep["program"]],
              "args": create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})["args"]}
    command = []
    for chunk in sweep["command"]:
        command += macros[chunk[2:-1]] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return command


def points(sweep: dict) -> list[dict]:
    """Every value of every parameter at least once (the others at their first value)."""
    params = {k: v["values"] for k, v in sweep["parameters"].items()}
    first = {k: v[0] for k, v in params.items()}
    return [{**first, name: value} for name, values in params.items() for value in values]


def attribute(model, dotted: str):
    """``model.generator.init_args.kernel_size`` -> the instantiated model's value."""
    keys = dotted.split(".")[1:]  # drop "model"
    obj = model
    if keys and keys[0] == "generator":
        obj, keys = model.generator, [k for k in keys[1:] if k != "init_args"]
        return getattr(obj, keys[0]) if keys else obj
    return model.hparams[keys[0]]


def test_there_are_sweeps():
    assert {p.name for p in SWEEPS} >= {"dfn_lr_kernel.yaml", "generators_lr.yaml"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_is_well_formed(path):
    sweep = load_sweep_config(str(path))  # as `wandb sweep` reads it
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["name"].startswith("val/"), "sweeps select on validation, never on test"
    assert sweep["metric"]["goal"] in ("minimize", "maximize")
    assert "${args}" in sweep["command"] and (ROOT / sweep["program"]).is_file()
    config = sweep["command"][sweep["command"].index("--config") + 1]
    assert (ROOT / config).is_file(), config
    assert all(name.split(".")[0] in ("model", "data", "trainer") for name in sweep["parameters"])


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_value_is_accepted_by_the_cli(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the agent runs from the repository root
    sweep = yaml.safe_load(path.read_text())
    for values in points(sweep):
        command = agent_command(sweep, values)
        assert command[:2] == ["train.py", "fit"]
        cli = main(args=command[2:], run=False)  # parse and instantiate, as `fit` does before training
        for name, value in values.items():
            got = attribute(cli.model, name)
            if name == "model.generator":
                expected = yaml.safe_load(value)
                assert type(got).__name__ == expected["class_path"].rsplit(".", 1)[-1]
                parsed = cli.config["model"]["init_args"]["generator"]["init_args"]  # model in subclass mode
                for arg, wanted in expected["init_args"].items():
                    assert (list(parsed[arg]) if isinstance(parsed[arg], tuple) else parsed[arg]) == wanted, arg
            else:
                assert got == value, (name, got, value)


def test_agent_flags_are_key_equals_value():
    """What the agent hands over, so that the test above checks the real format."""
    assert create_sweep_command_args({"args": {"model.lr": {"value": 0.001}}})["args"] == ["--model.lr=0.001"]
