"""Old name of :mod:`edge_runtime.onnx_session`, kept only until exporter/bundle_build.py imports that.

``OnnxBackend`` here is the session wrapper, not the daemon backend of the same name in
:mod:`edge_runtime.backends.onnx`; new code uses ``edge_runtime.onnx_session.OnnxSession``.
"""

from .onnx_session import OnnxSession as OnnxBackend

__all__ = ["OnnxBackend"]
