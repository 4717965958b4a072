"""environment.yml (conda) and pyproject.toml (pip) install the same pinned packages."""

from __future__ import annotations

import tomllib

import yaml


def _pyproject_requirements(project_root) -> set[str]:
    project = tomllib.loads((project_root / "pyproject.toml").read_text())["project"]
    requirements = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements |= set(extra)
    return requirements


def _conda_pip_requirements(project_root) -> set[str]:
    environment = yaml.safe_load((project_root / "environment.yml").read_text())
    pip_sections = [item["pip"] for item in environment["dependencies"] if isinstance(item, dict)]
    assert len(pip_sections) == 1, "environment.yml must have exactly one pip section"
    return set(pip_sections[0])


def test_same_packages_and_pins(project_root):
    assert _conda_pip_requirements(project_root) == _pyproject_requirements(project_root)


def test_every_requirement_is_pinned(project_root):
    for requirement in _pyproject_requirements(project_root):
        assert "==" in requirement, f"{requirement} is not pinned with =="


def test_torch_pair_matches_local_wheels(project_root):
    requirements = _pyproject_requirements(project_root)
    assert "torch==2.14.1" in requirements
    assert "torchvision==0.29.1" in requirements


def test_python_version_agrees(project_root):
    environment = yaml.safe_load((project_root / "environment.yml").read_text())
    assert "python=3.11" in environment["dependencies"]
