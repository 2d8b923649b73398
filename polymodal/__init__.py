"""polymodal: stream any modality from sharded storage into a shared Perceiver backbone.

Subpackages: `adapters` (bytes → arrays), `datasets` (data at rest), `pipelines` (data in
motion), `perceiver` (the model). See DESIGN.md for the contracts between them.
"""

__version__ = "0.1.0"
