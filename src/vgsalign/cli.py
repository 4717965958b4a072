"""The vgsalign command: one subcommand per pipeline stage, plus tools.

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
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence

import yaml

from vgsalign.config import ParamsError, load_params, load_schema, read_yaml
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


def positive_number(name: str, maximum: float = math.inf) -> Callable[[str], float]:
    """Return an argparse type that parses a number in (0, ``maximum``], naming ``name`` in its error."""
    expected = "a positive number" + (f" of at most {maximum:g}" if math.isfinite(maximum) else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (0 < value <= maximum) or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"invalid {name} {text!r}: expected {expected}")
        return value

    return parse


def non_negative_integer(name: str) -> Callable[[str], int]:
    """Return an argparse type that parses an integer of 0 or more, naming ``name`` in its error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(f"invalid {name} {text!r}: expected an integer of 0 or more")
        return value

    return parse


class UniqueChoices(argparse.Action):
    """Store the values of a ``nargs="+"`` option, rejecting a value given twice."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            listed = ", ".join(map(repr, repeated))
            parser.error(f"argument {option_string}: {listed} given twice (list each value once)")
        setattr(namespace, self.dest, list(values))


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
    # The same bound as models.width in the parameter schema. Widths such as 1e30 overflow torch's tensor sizes.
    max_width = load_schema()["properties"]["models"]["properties"]["width"]["maximum"]
    describe.add_argument(
        "--width",
        type=positive_number("width", max_width),
        default=1.0,
        help=f"filter-count multiplier, at most {max_width:g} (1.0 = paper)",
    )

    score = commands.add_parser(
        "score-tensors", help="score alignment tensors in the Parquet exchange format (any model)"
    )
    score.add_argument("tensors", help="Parquet file of alignment tensors (format: README, 'Scoring other models' alignment tensors')")
    score.add_argument("--pairs", required=True, help="pairs.parquet of the word-object pairs")
    score.add_argument("--masks", required=True, help="masks.parquet of the test-image masks")
    score.add_argument(
        "--out",
        required=True,
        help="output folder, created if missing; gets pairs.parquet (per-pair scores), summary.json "
        "(totals with bootstrap intervals) and confusion.parquet",
    )
    score.add_argument(
        "--conventions",
        nargs="+",
        default=["paper", "released_code"],
        choices=["paper", "released_code"],
        action=UniqueChoices,
        help="scoring conventions to compute, each at most once",
    )
    score.add_argument(
        "--bootstrap",
        type=non_negative_integer("resample count"),
        default=1000,
        help="bootstrap resamples for the intervals (0: none)",
    )
    score.add_argument("--seed", type=non_negative_integer("seed"), default=0, help="seed of the bootstrap (0 or more)")

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
            source = "models.variants" if stage.wildcard == "variant" else "the shard count (features.*_shards)"
            raise ParamsError(
                f"invalid --{stage.wildcard} {value!r} for stage {stage.name}: this run has "
                f"{', '.join(allowed)}. Use one of them, or change {source} in the parameters."
            )
        arguments.append(value)

    module_name, function_name = stage.entry.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    label = stage.name + (f" [{arguments[0]}]" if arguments else "")
    logger.info("starting %s (run %s)", label, params["run"])
    started = time.perf_counter()
    function(params, paths, *arguments)
    logger.info("finished %s in %.1f s", label, time.perf_counter() - started)


def _score_tensors(args: argparse.Namespace) -> None:
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


def _overlay_hint(files: Sequence[str]) -> str | None:
    """Return a hint when the first of ``files`` lacks top-level parameters, as a run configuration does."""
    try:
        first = read_yaml(files[0])
    except ParamsError:
        return None
    missing = [key for key in load_schema().get("required", []) if key not in first]
    if not missing:
        return None
    return (
        f"hint: {files[0]} is not a complete parameter file (it lacks {', '.join(missing[:3])}"
        f"{', ...' if len(missing) > 3 else ''}). A run configuration only overrides the root params.yaml, "
        f"so give it after that file: vgsalign check-params params.yaml {' '.join(files)}"
    )


def _check_params(files: Sequence[str]) -> None:
    """Print the merged parameters of ``files``, or raise ParamsError, with a hint for a lone run configuration."""
    try:
        params = load_params(files)
    except ParamsError as error:
        hint = _overlay_hint(files)
        if hint is None:
            raise
        raise ParamsError(f"{error}\n{hint}") from error
    print(yaml.safe_dump(params, sort_keys=False), end="")


def _command_inputs(args: argparse.Namespace) -> tuple[list[str], RunPaths | None]:
    """Return the input files of the command in ``args`` and the run's paths, for error messages."""
    if hasattr(args, "stage"):
        try:
            paths = RunPaths(load_params(args.params))
        except ParamsError:
            return [], None
        wildcard = getattr(args, args.stage.wildcard, None) if args.stage.wildcard else None
        pattern = f"{{{args.stage.wildcard}}}"
        inputs = [path.replace(pattern, wildcard) if wildcard else path for path in args.stage.inputs(paths)]
        return inputs, paths
    if args.command == "score-tensors":
        return [args.tensors, args.pairs, args.masks], None
    return [], None


def _report_error(args: argparse.Namespace, message: str, details: str = "") -> None:
    """Print ``message`` on stderr and append it, with ``details``, to the command's log file."""
    print(f"vgsalign: error: {message}", file=sys.stderr)
    log_file = getattr(args, "log", None)
    if log_file:
        # The log file is what Snakemake shows for a failed job and what cluster users read.
        with open(log_file, "a") as handle:
            handle.write(f"{time.strftime('%H:%M:%S')} ERROR vgsalign: {message}\n{details}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if hasattr(args, "stage"):
            _run_stage(args.stage, args)
        elif args.command == "describe":
            from vgsalign.models import describe

            print(describe(width=args.width))
        elif args.command == "score-tensors":
            _score_tensors(args)
        elif args.command == "check-params":
            _check_params(args.files)
        elif args.command == "dvc-yaml":
            from vgsalign.dvc import dvc_yaml_path, render_dvc_yaml
            from vgsalign.io import write_text_atomic

            target = dvc_yaml_path(args.run_folder)
            write_text_atomic(target, render_dvc_yaml(args.run_folder))
            print(f"wrote {target}")
    except (ParamsError, OutputPathError) as error:
        _report_error(args, str(error))
        return 2
    except Exception as error:
        from vgsalign.errors import input_error_message

        inputs, paths = _command_inputs(args)
        # The three inputs of score-tensors are Parquet files whatever their file names.
        parquet_inputs = inputs if args.command == "score-tensors" else []
        message = input_error_message(error, inputs, paths, parquet_inputs=parquet_inputs)
        trace = traceback.format_exc()
        if message is None or os.environ.get("VGSALIGN_TRACEBACK"):
            _report_error(args, f"{type(error).__name__}: {error}", trace)
            raise
        _report_error(args, f"{message} (set VGSALIGN_TRACEBACK=1 for the traceback)", trace)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
