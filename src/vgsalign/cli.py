"""The ``vgsalign`` command: one subcommand per pipeline stage plus tools.

Stage subcommands are what the Snakemake rules and DVC stages run::

    vgsalign train --params params.yaml config/demo/params.yaml --variant cnnatt_v0

Tools:

    vgsalign describe                 parameter counts of every variant beside the paper's
    vgsalign score-tensors ...        score alignment tensors of any model (exchange format)
    vgsalign check-params FILE...     validate parameter files and print the merged result
    vgsalign dvc-yaml [config/RUN]    write dvc.yaml generated from the stage table
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from collections.abc import Sequence

import yaml

from vgsalign.config import ParamsError, load_params
from vgsalign.io import OutputPathError, ensure_dir, setup_logging
from vgsalign.layout import RunPaths
from vgsalign.workflow import STAGES, Stage, wildcard_values

logger = logging.getLogger("vgsalign")


def _add_params_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params",
        nargs="+",
        default=["params.yaml"],
        metavar="FILE",
        help="parameter files merged in order, later ones overriding earlier ones (default: params.yaml)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgsalign", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for stage in STAGES.values():
        sub = commands.add_parser(stage.command, help=f"run stage {stage.name}")
        _add_params_argument(sub)
        if stage.wildcard is not None:
            sub.add_argument(
                f"--{stage.wildcard}",
                required=True,
                help="model variant to run" if stage.wildcard == "variant" else "feature shard number (0000, 0001, ...)",
            )
        sub.add_argument("--log", help="also append the log to this file")
        sub.set_defaults(stage=stage)

    describe = commands.add_parser("describe", help="print each variant's parameter count beside the paper's")
    describe.add_argument("--width", type=float, default=1.0, help="filter-count multiplier (1.0 = paper)")

    score = commands.add_parser(
        "score-tensors", help="score alignment tensors in the Parquet exchange format (any model)"
    )
    score.add_argument("tensors", help="Parquet file of alignment tensors (format: README, 'Scoring other models' alignment tensors')")
    score.add_argument("--pairs", required=True, help="pairs.parquet of the word-object pairs")
    score.add_argument("--masks", required=True, help="masks.parquet of the test-image masks")
    score.add_argument("--out", required=True, help="output folder for pairs.parquet and summary.json")
    score.add_argument(
        "--conventions",
        nargs="+",
        default=["paper", "released_code"],
        choices=["paper", "released_code"],
        help="scoring conventions to compute",
    )
    score.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    score.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")

    check = commands.add_parser("check-params", help="validate parameter files and print the merged result")
    check.add_argument("files", nargs="+", help="parameter files merged in order")

    dvc = commands.add_parser("dvc-yaml", help="write dvc.yaml generated from the stage table and the parameters")
    dvc.add_argument(
        "run_folder",
        nargs="?",
        help="run configuration folder holding an overlay params.yaml (e.g. config/demo); "
        "default: the paper's run in the project root",
    )
    return parser


def _run_stage(stage: Stage, args: argparse.Namespace) -> None:
    params = load_params(args.params)
    paths = RunPaths(params)
    ensure_dir(paths.root)
    setup_logging(args.log)

    arguments = []
    if stage.wildcard is not None:
        value = getattr(args, stage.wildcard)
        allowed = wildcard_values(stage, paths)
        if value not in allowed:
            raise ParamsError(
                f"invalid --{stage.wildcard} {value!r} for stage {stage.name}: this run has "
                f"{', '.join(allowed)}. Check models.variants or the shard count in the parameters."
            )
        arguments.append(value)

    module_name, function_name = stage.entry.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    label = stage.name + (f" [{arguments[0]}]" if arguments else "")
    logger.info("starting %s (run %s)", label, params["run"])
    started = time.perf_counter()
    function(params, paths, *arguments)
    logger.info("finished %s in %.1f s", label, time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if hasattr(args, "stage"):
            _run_stage(args.stage, args)
        elif args.command == "describe":
            from vgsalign.models import describe

            print(describe(width=args.width))
        elif args.command == "score-tensors":
            from vgsalign.scoring.stage import score_external

            setup_logging()
            score_external(
                args.tensors,
                args.pairs,
                args.masks,
                args.out,
                conventions=args.conventions,
                bootstrap_resamples=args.bootstrap,
                seed=args.seed,
            )
        elif args.command == "check-params":
            print(yaml.safe_dump(load_params(args.files), sort_keys=False), end="")
        elif args.command == "dvc-yaml":
            from vgsalign.dvc import dvc_yaml_path, render_dvc_yaml
            from vgsalign.io import write_text_atomic

            target = dvc_yaml_path(args.run_folder)
            write_text_atomic(target, render_dvc_yaml(args.run_folder))
            print(f"wrote {target}")
    except (ParamsError, OutputPathError) as error:
        print(f"vgsalign: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        # The stages raise their own exception classes for bad input. Their message
        # names the file or value and the fix, so it is printed alone. Any other
        # exception is a bug and keeps its traceback.
        if not _is_input_error(error) or os.environ.get("VGSALIGN_TRACEBACK"):
            raise
        logger.debug("traceback of the error below", exc_info=True)
        message = str(error)
        if isinstance(error, FileNotFoundError) and "not found" not in message:
            missing = error.filename or message
            message = f"input file not found: {missing}. Run the stage that writes it first, or check the parameters"
        print(f"vgsalign: error: {message} (set VGSALIGN_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


def _is_input_error(error: BaseException) -> bool:
    """True for the exception classes that vgsalign raises about its inputs, and missing files."""
    return type(error).__module__.startswith("vgsalign") or isinstance(error, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
