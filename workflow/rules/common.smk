# Shared set-up: validate the parameters before any rule runs, derive every path
# from them, and record the resolved parameters that each command reads.

from pathlib import Path

from snakemake.exceptions import WorkflowError

from vgsalign.config import ParamsError, validate_params
from vgsalign.layout import RunPaths
from vgsalign.workflow import STAGES, final_outputs, wildcard_values, write_resolved_params

try:
    validate_params(config, source="workflow configuration (params.yaml + --configfile/--config)")
except ParamsError as error:
    raise WorkflowError(str(error)) from None

PATHS = RunPaths(config)
# Every rule runs in the environment of environment.yml under --use-conda (the path
# is relative to the rule files); the package itself is imported from src/.
CONDA_ENV = "../../environment.yml"
# Snakemake formats the prefix too, so shell braces are doubled twice here.
shell.prefix(f"export PYTHONPATH={workflow.basedir}/src${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")
# The merged parameters, written only when they change so that the file's
# timestamp never triggers a rerun. Each command reads its values from here.
PARAMS_FILE = write_resolved_params(config, PATHS)


def stage_output(name):
    """Outputs of a stage: folders marked directory(), report items marked report()."""
    stage = STAGES[name]
    shown = stage.reports(PATHS)
    outputs = []
    for path in stage.outputs(PATHS):
        item = directory(path) if not Path(path).suffix else path
        if path in shown:
            caption, category, patterns = shown[path]
            options = {"patterns": patterns} if patterns else {}
            item = report(item, caption=f"../report/{caption}", category=category, **options)
        outputs.append(item)
    return outputs


def stage_shell(name):
    """The stage's command; torch and NumPy use the job's thread count, not every core."""
    stage = STAGES[name]
    value = None if stage.wildcard is None else "{wildcards.%s}" % stage.wildcard
    return "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} " + stage.cli(PARAMS_FILE, value) + " --log {log}"


wildcard_constraints:
    shard=r"\d{4}",
    variant=r"[a-z0-9_]+",
