# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
What every other part of the lab uses: the error type and the command line, files written atomically, number
formatting and tables, image decoding, loading models by name, model cards and the Hub.
"""
