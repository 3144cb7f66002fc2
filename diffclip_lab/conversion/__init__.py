# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Checkpoints in and out: the official release converted exactly, CLIP into DiffCLIP, ONNX export.
"""
