"""`aiotedge profile`: measured costs for the converter's planner (stub, being written)."""

from __future__ import annotations

import argparse


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="MODEL.tflite")


def run_profile(args: argparse.Namespace) -> int:
    raise NotImplementedError(args.model)
