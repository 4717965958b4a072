# Shared set-up: validate the parameters before any rule runs, derive every path
# from them, and record the resolved parameters that each command reads.

from pathlib import Path

from snakemake.exceptions import WorkflowError

from vgsalign.config import ParamsError, validate_params
from vgsalign.io import OutputPathError, check_folder_path
from vgsalign.layout import RunPaths
from vgsalign.workflow import STAGES, final_outputs, missing_raw_inputs, resolved_params_file, write_resolved_params

try:
    validate_params(config, source="workflow configuration (params.yaml, --configfile and --config)")
    PATHS = RunPaths(config)
    check_folder_path(PATHS.root)
except (ParamsError, OutputPathError) as error:
    raise WorkflowError(str(error)) from None

# Every rule runs in the environment of environment.yml under --use-conda (the path
# is relative to the rule files); the package itself is imported from src/.
CONDA_ENV = "../../environment.yml"
# Snakemake formats the prefix too, so shell braces are doubled twice here.
shell.prefix(f"export PYTHONPATH={workflow.basedir}/src${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")
# Each command reads the merged parameters from this file. It is written when a
# run starts (not by dry runs, --lint or --report, which would otherwise change it
# under a running workflow), and only when its content changes, so that its
# timestamp never triggers a rerun.
PARAMS_FILE = str(resolved_params_file(PATHS))


# Snakemake does not schedule a job whose input data is missing even when its
# parameters changed, so a mistyped data path or vectors file would silently keep
# old results and report "Nothing to be done". Rule all therefore also requests
# the missing data, which makes every run and dry run stop with Snakemake's
# MissingInputException after this message.
MISSING_INPUTS = missing_raw_inputs(PATHS)
if MISSING_INPUTS:
    logger.error(
        f"input data not found: {', '.join(MISSING_INPUTS)}. Put the data there or fix the paths "
        "(data.coco_root, data.speech.root, pairs.vectors) in the parameters."
    )


onstart:
    write_resolved_params(config, PATHS)


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
    command = stage.cli(PARAMS_FILE, value)
    return f"OMP_NUM_THREADS={{threads}} MKL_NUM_THREADS={{threads}} {command} --log {{log}}"


wildcard_constraints:
    shard=r"\d{4}",
    variant=r"[a-z0-9_]+",
