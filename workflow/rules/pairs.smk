# Stage 5: pair nouns with image objects by word2vec similarity; build the masks.


rule pair_words_objects:
    input:
        STAGES["pair_words_objects"].inputs(PATHS),
    output:
        stage_output("pair_words_objects"),
    params:
        **STAGES["pair_words_objects"].param_values(config),
    conda:
        CONDA_ENV
    log:
        str(PATHS.log("pair_words_objects")),
    threads: 1
    resources:
        mem_mb=12000,
        runtime=120,
    shell:
        stage_shell("pair_words_objects")
