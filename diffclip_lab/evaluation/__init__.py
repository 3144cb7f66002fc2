# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The paper's evaluations: datasets in the documented layouts, the protocols (zero-shot, retrieval, linear probe,
few-shot, MMVP), the tasks over a dual encoder, reports and figures, relevance maps and the study.
"""
