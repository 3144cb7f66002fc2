# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The synthetic data the demos and tests run on: captioned shapes (and MMVP-style pairs), a tiny language model.
"""
