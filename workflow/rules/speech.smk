# Stage 2: synthesise SPEECH-COCO-format speech (WAV + JSON with word time stamps)
# for COCO captions with espeak-ng. Runs for the demo and when
# data.speech.source is "synthesize"; SPEECH-COCO itself was made the same way.


if STAGES["synthesize_speech"].enabled(PATHS):

    rule synthesize_speech:
        input:
            STAGES["synthesize_speech"].inputs(PATHS),
        output:
            stage_output("synthesize_speech"),
        params:
            **STAGES["synthesize_speech"].param_values(config),
        conda:
            CONDA_ENV
        log:
            str(PATHS.log("synthesize_speech")),
        threads: 8
        resources:
            mem_mb=2000,
            runtime=600,
        shell:
            stage_shell("synthesize_speech")
