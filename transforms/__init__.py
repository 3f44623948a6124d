"""Reusable Beam transforms of beamml, each over pyarrow RecordBatches, with their numpy kernels."""
