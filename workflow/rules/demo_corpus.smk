# Stage 1 (demo runs only): generate a COCO-format corpus of named shapes.


if STAGES["make_demo_corpus"].enabled(PATHS):

    rule make_demo_corpus:
        output:
            stage_output("make_demo_corpus"),
        params:
            **STAGES["make_demo_corpus"].param_values(config),
        conda:
            CONDA_ENV
        log:
            str(PATHS.log("make_demo_corpus")),
        threads: 1
        resources:
            mem_mb=1000,
            runtime=30,
        shell:
            stage_shell("make_demo_corpus")
