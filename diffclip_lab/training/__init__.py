# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Contrastive pretraining: image-text data, the loss and exact accumulation, the paper's recipes, and the run
machinery (batch plan, resume, checkpoints) with the one training loop every trainer uses.
"""
