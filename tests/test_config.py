"""Parameter loading: merging, schema validation and its error messages."""

from __future__ import annotations

import pytest
import yaml

from vgsalign.config import ParamsError, deep_merge, load_params, lookup, validate_params
from vgsalign.io import OutputPathError, ensure_dir


def test_params_yaml_is_valid(project_root):
    params = load_params([project_root / "params.yaml"])
    assert params["run"] == "paper"
    assert params["train"]["margin"] == 0.1


@pytest.mark.parametrize("name", ["demo", "coco-tiny", "test"])
def test_run_configs_are_valid(project_root, name):
    params = load_params([project_root / "params.yaml", project_root / "config" / name / "params.yaml"])
    assert params["run"] != "paper"


def test_overlay_overrides_only_named_keys(project_root):
    base = load_params([project_root / "params.yaml"])
    demo = load_params([project_root / "params.yaml", project_root / "config" / "demo" / "params.yaml"])
    assert demo["train"]["margin"] == base["train"]["margin"]
    assert demo["models"]["width"] == 0.125
    assert demo["models"]["variants"] == base["models"]["variants"]


def test_deep_merge_keeps_siblings():
    merged = deep_merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}})
    assert merged == {"a": {"b": 5, "c": 2}, "d": 3}


def test_deep_merge_does_not_mutate_inputs():
    base = {"a": {"b": 1}}
    deep_merge(base, {"a": {"b": 2}})
    assert base == {"a": {"b": 1}}


def _write(tmp_path, data):
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_key_names_key_and_suggestion(project_root, tmp_path):
    overlay = _write(tmp_path, {"train": {"epoch": 3}})
    with pytest.raises(ParamsError) as raised:
        load_params([project_root / "params.yaml", overlay])
    message = str(raised.value)
    assert "train.epoch" in message
    assert "did you mean 'epochs'" in message


def test_wrong_type_names_key(project_root, tmp_path):
    overlay = _write(tmp_path, {"train": {"batch_size": "large"}})
    with pytest.raises(ParamsError) as raised:
        load_params([project_root / "params.yaml", overlay])
    assert "train.batch_size" in str(raised.value)
    assert "'large'" in str(raised.value)


def test_unknown_variant_lists_allowed(project_root, tmp_path):
    overlay = _write(tmp_path, {"models": {"variants": ["cnn0_sisa", "cnnatt_v9"]}})
    with pytest.raises(ParamsError) as raised:
        load_params([project_root / "params.yaml", overlay])
    message = str(raised.value)
    assert "models.variants.1" in message
    assert "'cnnatt_v0'" in message


def test_fig3_variant_must_be_trained(project_root):
    params = load_params([project_root / "params.yaml"])
    params["models"]["variants"] = ["cnn0_sisa"]
    with pytest.raises(ParamsError, match="report.fig3_variant"):
        validate_params(params)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params([tmp_path / "absent.yaml"])


def test_lookup_dotted_key(project_root):
    params = load_params([project_root / "params.yaml"])
    assert lookup(params, "features.audio.n_mels") == 40
    with pytest.raises(ParamsError, match="features.audio.n_bands"):
        lookup(params, "features.audio.n_bands")


def test_output_path_that_is_a_file(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    with pytest.raises(OutputPathError, match="is not a directory"):
        ensure_dir(blocker / "demo")


@pytest.mark.parametrize(
    ("section", "key"),
    [("train", "lr"), ("models", "width"), ("pairs", "threshold"), ("scoring", "confidence")],
)
def test_nan_is_rejected(project_root, tmp_path, section, key):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"{section}:\n  {key}: .nan\n")
    with pytest.raises(ParamsError) as raised:
        load_params([project_root / "params.yaml", overlay])
    assert f"invalid value nan for '{section}.{key}'" in str(raised.value)


def test_exponent_without_point_gets_hint(project_root, tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("train:\n  lr: 1e-3\n")  # PyYAML reads this as the string '1e-3'
    with pytest.raises(ParamsError) as raised:
        load_params([project_root / "params.yaml", overlay])
    message = str(raised.value)
    assert "invalid type for 'train.lr': '1e-3'" in message
    assert "such as 1.0e-03" in message
    assert yaml.safe_load("lr: 1.0e-03")["lr"] == 0.001  # the suggested spelling is a number


def test_min_above_max_is_rejected(project_root, tmp_path):
    overlay = _write(tmp_path, {"demo": {"objects_per_image": [3, 1]}})
    with pytest.raises(ParamsError) as raised:
        load_params([project_root / "params.yaml", overlay])
    assert "invalid value [3, 1] for 'demo.objects_per_image'" in str(raised.value)
    assert "write [1, 3]" in str(raised.value)


def test_directory_as_parameter_file(tmp_path):
    with pytest.raises(ParamsError) as raised:
        load_params([tmp_path])
    assert "is a directory" in str(raised.value)
    assert str(tmp_path / "params.yaml") in str(raised.value)


def test_yaml_error_names_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [1,\n")
    with pytest.raises(ParamsError) as raised:
        load_params([broken])
    assert "<unicode string>" not in str(raised.value)
    assert str(raised.value).count(str(broken)) >= 2  # the first line and the position line
