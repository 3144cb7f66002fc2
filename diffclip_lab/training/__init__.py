# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Contrastive pretraining: the loss and exact accumulation, the paper's recipes, the run machinery (batch plan,
resume, checkpoints), the one training loop every trainer uses, and the pretraining script's parts.
"""
