"""Targets: the exported ONNX model -> a deployable artifact, one module per target.

Looked up by name through `converters.registry`; see `converters.base.Target` for the protocol.
"""
