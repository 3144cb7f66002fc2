# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
DiffCLIP in a LLaVA-style vision-language model: composition and saving, conversation data, the two training
stages, POPE, and the VLM demo with its scenes of shapes.
"""
