# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Timing and memory measurement shared by the scripts in `benchmarks/`.
"""
