# Stage 9: alignment (AS) and glancing (GS) scores per ground-truth pair, per
# category and in total, for each variant and for the random baseline.


rule score_alignments:
    input:
        STAGES["score_alignments"].inputs(PATHS),
    output:
        stage_output("score_alignments"),
    params:
        **STAGES["score_alignments"].param_values(config),
    conda:
        CONDA_ENV
    log:
        str(PATHS.log("score_alignments", "{variant}")),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        stage_shell("score_alignments")


rule score_baseline:
    input:
        STAGES["score_baseline"].inputs(PATHS),
    output:
        stage_output("score_baseline"),
    params:
        **STAGES["score_baseline"].param_values(config),
    conda:
        CONDA_ENV
    log:
        str(PATHS.log("score_baseline")),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        stage_shell("score_baseline")
