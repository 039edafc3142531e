"""Pulumi entry point: runs the program of the selected stack's stage."""

from stacks.stages import main

main()
