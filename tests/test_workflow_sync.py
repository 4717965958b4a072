"""The Snakemake rules and dvc.yaml describe the same stages.

The Snakemake side is read through Snakemake's own API (the rules as Snakemake
parsed them), the DVC side from the committed dvc.yaml, so a hand edit of
either file, or a stage-table change without regenerating dvc.yaml, fails here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from vgsalign.config import load_params
from vgsalign.dvc import render_dvc_yaml


RUNS = [None, "config/demo", "config/coco-tiny", "config/test"]


@pytest.fixture(scope="module", params=[None, "config/demo"], ids=["paper", "demo"])
def run_folder(request):
    return request.param


@pytest.fixture(scope="module")
def snakemake_rules(project_root, run_folder):
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    previous = os.getcwd()
    os.chdir(project_root)
    try:
        with SnakemakeApi(OutputSettings()) as api:
            workflow_api = api.workflow(
                resource_settings=ResourceSettings(cores=1),
                config_settings=ConfigSettings(configfiles=_config_files(run_folder)),
                snakefile=Path("Snakefile"),
            )
            # NOTE: _workflow is Snakemake's parsed workflow; the public API offers no
            # rule listing with inputs and outputs (snakemake 9.27).
            rules = {rule.name: rule for rule in workflow_api._workflow.rules if rule.name != "all"}
            return {
                name: {
                    "shell": rule.shellcmd,
                    "inputs": [str(item) for item in rule.input],
                    "outputs": [str(item) for item in rule.output],
                    "params": sorted(rule.params.keys()),
                    "log": [str(item) for item in rule.log],
                }
                for name, rule in rules.items()
            }
    finally:
        os.chdir(previous)


def _config_files(run_folder):
    files = [Path("params.yaml")]
    if run_folder is not None:
        files.append(Path(run_folder) / "params.yaml")
    return files


@pytest.fixture(scope="module")
def dvc_stages(project_root, run_folder):
    return yaml.safe_load((project_root / (run_folder or ".") / "dvc.yaml").read_text())["stages"]


@pytest.fixture(scope="module")
def params_argument(run_folder):
    return " ".join(str(path) for path in _config_files(run_folder))


def _normalise_snakemake_shell(command: str, params_argument: str) -> str:
    """Map a rule's shell command onto the DVC form: parameter files, ${item}, no --log,
    no thread variables (DVC runs one stage at a time with every core)."""
    command = command.replace("OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} ", "")
    command = re.sub(r"--params \S+", f"--params {params_argument}", command)
    command = re.sub(r"\{wildcards\.\w+\}", "${item}", command)
    return command.replace(" --log {log}", "")


def _normalise_pattern(path: str) -> str:
    """Turn a Snakemake output pattern such as shard-{shard,\\d{4}} into DVC's ${item}."""
    return re.sub(r"\{\w+(,[^{}]*(\{[^{}]*\})?[^{}]*)?\}", "${item}", path)


def _dvc_body(stage: dict) -> dict:
    return stage["do"] if "foreach" in stage else stage


def _dvc_paths(body: dict, key: str) -> list[str]:
    return [next(iter(item)) if isinstance(item, dict) else item for item in body.get(key, [])]


@pytest.mark.parametrize("folder", RUNS)
def test_dvc_yaml_is_up_to_date(project_root, folder, monkeypatch):
    monkeypatch.chdir(project_root)
    expected = render_dvc_yaml(folder)
    committed = (project_root / (folder or ".") / "dvc.yaml").read_text()
    assert committed == expected, f"regenerate with: vgsalign dvc-yaml {folder or ''}"


def test_same_stage_names(snakemake_rules, dvc_stages):
    assert sorted(snakemake_rules) == sorted(dvc_stages)


def test_same_commands(snakemake_rules, dvc_stages, params_argument):
    for name, rule in snakemake_rules.items():
        command = _normalise_snakemake_shell(rule["shell"], params_argument)
        assert command == _dvc_body(dvc_stages[name])["cmd"], name


def test_same_inputs(snakemake_rules, dvc_stages):
    for name, rule in snakemake_rules.items():
        dvc_deps = _dvc_body(dvc_stages[name]).get("deps", [])
        assert [_normalise_pattern(path) for path in rule["inputs"]] == dvc_deps, name


def test_same_outputs(snakemake_rules, dvc_stages):
    for name, rule in snakemake_rules.items():
        body = _dvc_body(dvc_stages[name])
        dvc_outputs = _dvc_paths(body, "outs") + _dvc_paths(body, "metrics") + _dvc_paths(body, "plots")
        assert sorted(_normalise_pattern(path) for path in rule["outputs"]) == sorted(dvc_outputs), name


def test_same_params(snakemake_rules, dvc_stages, run_folder):
    for name, rule in snakemake_rules.items():
        entries = _dvc_body(dvc_stages[name])["params"]
        base_keys = [entry for entry in entries if isinstance(entry, str)]
        overlay_keys = [key for entry in entries if isinstance(entry, dict) for key in next(iter(entry.values()))]
        # Every key Snakemake watches is tracked by DVC, either whole in params.yaml
        # or, when the run overlay sets it, in the overlay file.
        for key in rule["params"]:
            dotted = key.replace("__", ".")
            assert dotted in base_keys or dotted in overlay_keys, (name, dotted)
        # The overlay keys DVC tracks are at or below keys the stage reads.
        read_keys = [key.replace("__", ".") for key in rule["params"]]
        for key in overlay_keys:
            assert any(key == read or key.startswith(read + ".") for read in read_keys), (name, key)


def test_same_wildcard_values(dvc_stages, project_root, run_folder):
    params = load_params([project_root / path for path in _config_files(run_folder)])
    assert dvc_stages["train_model"]["foreach"] == params["models"]["variants"]
    assert len(dvc_stages["extract_audio_features"]["foreach"]) == params["features"]["audio_shards"]
    assert len(dvc_stages["extract_image_features"]["foreach"]) == params["features"]["image_shards"]


def test_every_rule_has_a_log(snakemake_rules):
    for name, rule in snakemake_rules.items():
        assert rule["log"], f"rule {name} has no log"


def test_dvc_config_disables_network_checks(project_root):
    config = (project_root / ".dvc" / "config").read_text()
    assert "analytics = false" in config
    assert "check_update = false" in config


def _leaf_keys(mapping, prefix=""):
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaf_keys(value, dotted + ".")
        else:
            yield dotted


def _covers(keys, leaf):
    return any(leaf == key or leaf.startswith(key + ".") for key in keys)


def test_every_parameter_is_watched_or_speed_only(project_root):
    from vgsalign.workflow import STAGES

    params = load_params([project_root / "params.yaml"])
    watched = [key for stage in STAGES.values() for key in stage.params]
    speed_only = [key for stage in STAGES.values() for key in stage.speed_params]
    # A new key must be listed by the stages that read it, either as one that
    # determines their outputs or as one that changes only their speed.
    unlisted = [
        leaf for leaf in _leaf_keys(params) if leaf != "run" and not _covers(watched + speed_only, leaf)
    ]
    assert unlisted == []
    # A key that changes only the speed is never also watched by another stage.
    assert [key for key in speed_only if _covers(watched, key)] == []
