# Reproduces Khorrami & Rasanen (Interspeech 2021), "Evaluation of audio-visual
# alignments in visually grounded speech models".
#
#   snakemake --profile workflow/profiles/default --cores 4                        # the paper's run (params.yaml)
#   snakemake --profile workflow/profiles/default --configfile config/demo/params.yaml    # the built-in demo
#   snakemake --profile workflow/profiles/slurm --configfile my-run.yaml           # on a SLURM cluster
#
# params.yaml holds every parameter; a --configfile overrides only the keys it names.
# Every rule calls one command of the vgsalign package; the logic lives there.

from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo_corpus.smk"
include: "workflow/rules/speech.smk"
include: "workflow/rules/manifest.smk"
include: "workflow/rules/nouns.smk"
include: "workflow/rules/pairs.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_outputs(PATHS),
        MISSING_INPUTS,
    default_target: True
