"""Running a command as an Apache Beam pipeline: the shared ``--runner`` / ``--beam-options``.

Commands that can run on Beam (``python -m lsnet_tf.prepare``, ``python -m lsnet_tf.validate``)
keep their in-process path as the default and switch to a pipeline with ``--runner NAME``::

    python -m lsnet_tf.prepare tcia ... --runner DirectRunner \\
        --beam-options "--direct_num_workers=2 --direct_running_mode=multi_processing"
    python -m lsnet_tf.prepare tcia ... --runner DataflowRunner -- \\
        --project P --region R --temp_location gs://b/tmp --setup_file ./setup.py

Pipeline options come from ``--beam-options`` (one string, split like a shell command line) and
from everything after a ``--`` on the command line, in that order. A single option with no space
in it is given with ``=`` (``--beam-options=--direct_num_workers=2``; argparse would take the
bare ``--direct_num_workers=2`` for an option of its own). Unknown options are a usage
error (Beam itself would drop them with a warning, so a typo such as ``--direct_num_worker=2``
would silently run with the default).

For a command::

    argv, beam_argv = beam.split_argv(argv)
    parser = ...; beam.add_beam_arguments(parser)
    args = parser.parse_args(argv)
    options = beam.pipeline_options(args, beam_argv)   # None: run in process
"""
from __future__ import annotations

import argparse
import shlex
from typing import Sequence

RUNNER_HELP = ("run as an Apache Beam pipeline on this runner (DirectRunner, DataflowRunner, "
               "FlinkRunner, SparkRunner, ...); default: in this process without Beam")


class BeamOptionsError(ValueError):
    """Pipeline options that cannot be used (no runner, an unknown option, a runner given twice)."""


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``[own..., "--", beam...]`` -> (own, beam): the command's arguments and the pipeline
    options after the first ``--`` ([] when there is none)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def add_beam_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--runner`` and ``--beam-options`` to `parser` (or a subcommand's parser)."""
    g = parser.add_argument_group("Apache Beam (optional)")
    g.add_argument("--runner", default=None, metavar="NAME", help=RUNNER_HELP)
    g.add_argument("--beam-options", default="", metavar="'OPTIONS'",
                   help="Beam pipeline options in one string, e.g. '--direct_num_workers=2 "
                        "--direct_running_mode=multi_processing' or '--project P --region R "
                        "--temp_location gs://b/tmp --setup_file ./setup.py' (one option alone: "
                        "--beam-options=--direct_num_workers=2); options after a '--' on the "
                        "command line are added to these")


def option_tokens(args: argparse.Namespace, beam_argv: Sequence[str] = ()) -> list[str]:
    """The pipeline options of `args` and `beam_argv` as a Beam argv (``--runner=NAME`` first)."""
    text = getattr(args, "beam_options", "") or ""
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise BeamOptionsError(f"--beam-options {text!r} cannot be split: {e}") from None
    tokens += list(beam_argv)
    runner = getattr(args, "runner", None)
    if not runner:
        if tokens:
            raise BeamOptionsError(
                f"Beam pipeline options {tokens} need --runner NAME (without it the command runs "
                "in this process)")
        return []
    if any(t == "--runner" or t.startswith("--runner=") for t in tokens):
        raise BeamOptionsError("give the runner with --runner only, not among the pipeline options")
    return [f"--runner={runner}", *tokens]


def pipeline_options(args: argparse.Namespace, beam_argv: Sequence[str] = ()):
    """``apache_beam`` ``PipelineOptions`` for `args` (``--runner``, ``--beam-options``) and
    `beam_argv`, or None when no runner is given (the command runs in process).

    Raises:
      BeamOptionsError: options without a runner, a runner among the options, an option Beam
        does not know, or an option string that cannot be split.
    """
    tokens = option_tokens(args, beam_argv)
    if not tokens:
        return None
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(tokens)
    known = options.get_all_options(retain_unknown_options=False)
    everything = options.get_all_options(retain_unknown_options=True)
    unknown = sorted(set(everything) - set(known))
    if unknown:
        raise BeamOptionsError(
            "unknown Beam pipeline option(s): " + ", ".join(f"--{u}" for u in unknown)
            + " (Beam would drop them; see the pipeline options of Beam and of the runner)")
    return options


def describe(options) -> str:
    """One line naming the runner and the options that differ from Beam's defaults."""
    if options is None:
        return "in process"
    opts = options.get_all_options(drop_default=True)
    runner = opts.pop("runner", None)
    rest = " ".join(f"--{k}={v}" for k, v in sorted(opts.items()))
    return f"Beam {runner}" + (f" ({rest})" if rest else "")
