# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
What every other part of the lab uses: the error type and the command line, files written atomically, number
formatting and tables, image decoding and image-text datasets in every layout, loading models by name, what a
result records, model cards and the Hub. It depends on no other part of the lab.
"""
