# Stage 3: read COCO instances/captions and the speech metadata; split the data.


rule build_manifest:
    input:
        STAGES["build_manifest"].inputs(PATHS),
    output:
        stage_output("build_manifest"),
    params:
        **STAGES["build_manifest"].param_values(config),
    conda:
        CONDA_ENV
    log:
        str(PATHS.log("build_manifest")),
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        stage_shell("build_manifest")
