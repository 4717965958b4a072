# Stage 7: train one model variant (a wildcard); the best epoch by validation
# recall@10 is kept. An interrupted job resumes from its last complete epoch.


rule train_model:
    input:
        STAGES["train_model"].inputs(PATHS),
    output:
        stage_output("train_model"),
    params:
        **STAGES["train_model"].param_values(config),
    conda:
        CONDA_ENV
    log:
        str(PATHS.log("train_model", "{variant}")),
    benchmark:
        str(PATHS.log("train_model", "{variant}").with_suffix(".benchmark.tsv"))
    threads: 8
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=lambda wildcards: 0 if config["train"]["device"] == "cpu" else 1,
    shell:
        stage_shell("train_model")
