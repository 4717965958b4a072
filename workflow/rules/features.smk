# Stage 6: log-mel and frozen VGG16 features, one job per shard so that a
# cluster extracts the shards in parallel.


rule extract_audio_features:
    input:
        STAGES["extract_audio_features"].inputs(PATHS),
    output:
        stage_output("extract_audio_features"),
    params:
        **STAGES["extract_audio_features"].param_values(config),
    conda:
        CONDA_ENV
    log:
        str(PATHS.log("extract_audio_features", "{shard}")),
    benchmark:
        str(PATHS.log("extract_audio_features", "{shard}").with_suffix(".benchmark.tsv"))
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        stage_shell("extract_audio_features")


rule extract_image_features:
    input:
        STAGES["extract_image_features"].inputs(PATHS),
    output:
        stage_output("extract_image_features"),
    params:
        **STAGES["extract_image_features"].param_values(config),
    conda:
        CONDA_ENV
    log:
        str(PATHS.log("extract_image_features", "{shard}")),
    benchmark:
        str(PATHS.log("extract_image_features", "{shard}").with_suffix(".benchmark.tsv"))
    threads: config["features"]["image"]["num_workers"] + 1
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=lambda wildcards: 0 if config["features"]["device"] == "cpu" else 1,
    shell:
        stage_shell("extract_image_features")
