"""``cloud-trainer`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from cloud_trainer import __version__
from shared.errors import LinefleetError
from shared.signing import SigningKey


def _keygen(args: argparse.Namespace) -> int:
    """Write an Ed25519 key pair: the private key for the trainer, the public one for agents."""
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    private_path = out / f"{args.key_id}.key"
    public_path = out / f"{args.key_id}.pub"
    if private_path.exists() and not args.force:
        print(f"error: {private_path} exists; pass --force to replace it", file=sys.stderr)
        return 1
    key = SigningKey.generate(args.key_id)
    # Create the private key 0600 from the start: never world-readable, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_pem())
    public_path.write_bytes(key.public_pem())
    print(f"private key: {private_path} (keep it on the trainer only)")
    print(f"public key:  {public_path} (install on agents as trusted key {args.key_id!r})")
    return 0


def _synth_dataset(args: argparse.Namespace) -> int:
    from shared.synth import write_yolo_dataset  # noqa: PLC0415 - needs opencv, only here

    data = write_yolo_dataset(
        args.out_dir, train=args.train, val=args.val, seed=args.seed, drifts=args.drift
    )
    print(f"wrote {args.train} train + {args.val} val images; data file: {data}")
    return 0


def _fleet_acl(args: argparse.Namespace) -> int:
    from cloud_trainer.fleet_acl import FleetInventory, render_acl  # noqa: PLC0415

    text = render_acl(FleetInventory.from_file(args.inventory))
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloud-trainer", description="linefleet trainer, registry and rollout controller"
    )
    parser.add_argument("--version", action="version", version=f"cloud-trainer {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    keygen = commands.add_parser("keygen", help="create an Ed25519 manifest-signing key pair")
    keygen.add_argument("--key-id", required=True, help="id agents will know the key by")
    keygen.add_argument("--out-dir", type=Path, default=Path())
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.set_defaults(handler=_keygen)

    synth = commands.add_parser("synth-dataset", help="write a YOLO dataset of the synthetic line")
    synth.add_argument("--out-dir", type=Path, required=True)
    synth.add_argument("--train", type=int, default=200)
    synth.add_argument("--val", type=int, default=50)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--drift", action="append", default=None, help="drift preset (repeat to mix)"
    )
    synth.set_defaults(handler=_synth_dataset)

    acl = commands.add_parser("fleet-acl", help="mosquitto ACL for a fleet inventory")
    acl.add_argument("--inventory", type=Path, required=True)
    acl.add_argument("--out", type=Path)
    acl.set_defaults(handler=_fleet_acl)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "drift", "unset") is None:
        args.drift = ["none"]
    try:
        code: int = args.handler(args)
    except (LinefleetError, ValueError, OSError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
