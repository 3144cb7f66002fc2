# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The code the scripts of DiffCLIP for Transformers share: data, evaluation protocols, run machinery, conversion,
publishing and command-line plumbing. `modeling_diffclip` holds what a checkpoint carries and what loads it; this
package holds everything else, and the scripts in `examples/`, `convert/` and `benchmarks/` are thin `main()`s
over it.
"""
