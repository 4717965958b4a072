# Stage 10: Tables 1-2, Fig. 3, the other figures and report.md under results/<run>/.


rule make_report:
    input:
        STAGES["make_report"].inputs(PATHS),
    output:
        stage_output("make_report"),
    params:
        **STAGES["make_report"].param_values(config),
    conda:
        CONDA_ENV
    log:
        str(PATHS.log("make_report")),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        stage_shell("make_report")
