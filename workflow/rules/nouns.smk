# Stage 4: POS-tag the test captions and keep the nouns with their frame intervals.


rule extract_nouns:
    input:
        STAGES["extract_nouns"].inputs(PATHS),
    output:
        stage_output("extract_nouns"),
    params:
        **STAGES["extract_nouns"].param_values(config),
    conda:
        CONDA_ENV
    log:
        str(PATHS.log("extract_nouns")),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        stage_shell("extract_nouns")
