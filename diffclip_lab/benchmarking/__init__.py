# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Timing and memory measurement shared by the scripts in `benchmarks/` (`harness`), and the GPU check that
`benchmarks/gpu_check.sh` runs: its steps (`gpu_plan`), the attention backends against eager (`gpu_backends`) and
its report (`gpu_report`).
"""
