#!/usr/bin/env python3
"""Run DP-GEN's simplify workflow: `python submit_simplify.py config.json [--check] [--output DIR]`."""

import sys

from dflow_simplify.workflows.cli import main

if __name__ == "__main__":
    sys.exit(main())
