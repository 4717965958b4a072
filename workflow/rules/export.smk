# Stage 8: export the test-set alignment tensors T (and CNNATT's softmax T) in
# the Parquet exchange format, and the test-set retrieval recalls.


rule export_tensors:
    input:
        STAGES["export_tensors"].inputs(PATHS),
    output:
        stage_output("export_tensors"),
    params:
        **STAGES["export_tensors"].param_values(config),
    conda:
        CONDA_ENV
    log:
        str(PATHS.log("export_tensors", "{variant}")),
    threads: 8
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=lambda wildcards: 0 if config["train"]["device"] == "cpu" else 1,
    shell:
        stage_shell("export_tensors")
