"""Frontends: a native framework's model -> ONNX (dynamic batch), one module per framework.

Looked up by name through `converters.registry` (which imports only the module asked for);
see `converters.base.Frontend` for the protocol.
"""
