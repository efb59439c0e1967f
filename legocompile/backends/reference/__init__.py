"""Reference backend: ONNX's own reference evaluator (pure numpy; slow but independent of ONNX Runtime).

It runs on any CPU, proves the backend seam end to end in the tests, and is handy for debugging numerics.
"""

from legocompile.backends.reference.backend import ReferenceBackend

__all__ = ["ReferenceBackend"]
