"""Runnable beamml pipelines: one module each, with options, build() and run(argv)."""
