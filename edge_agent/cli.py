"""``edge-agent`` command line: ``run`` the agent, ``check-config`` a file."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from edge_agent import __version__
from edge_agent.errors import ConfigError
from shared.errors import LinefleetError

log = logging.getLogger("edge_agent")


def _check_config(args: argparse.Namespace) -> int:
    from edge_agent.config import load_config  # noqa: PLC0415 - keep --help fast
    from edge_agent.preflight import preflight  # noqa: PLC0415

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    problems = preflight(config)
    if problems:
        print(f"{args.config}: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"{args.config}: ok ({len(config.cameras)} camera(s), device {config.device.id})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent  # noqa: PLC0415
    from edge_agent.config import load_config, resolve_secret_files  # noqa: PLC0415
    from edge_agent.logs import configure_logging  # noqa: PLC0415

    try:
        config = resolve_secret_files(load_config(args.config))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    configure_logging(config.logging.level, json_format=config.logging.json_format)
    try:
        agent = Agent(config)
    except (LinefleetError, OSError) as exc:
        # A start-up failure is a clear line in the journal and exit code 1, not a traceback.
        log.error("agent failed to start", extra={"error": str(exc)})
        return 1

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received, stopping", extra={"signal": signal.Signals(signum).name})
        agent.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.run_until_stopped()
    except (LinefleetError, OSError) as exc:
        log.error("agent failed to start", extra={"error": str(exc)})
        agent.stop()
        return 1
    agent.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent", description="linefleet edge agent for production-line cameras"
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="run the agent until SIGTERM")
    run.add_argument("--config", type=Path, required=True)
    run.set_defaults(handler=_run)
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", type=Path, required=True)
    check.set_defaults(handler=_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
