"""Model conversion: native model -> ONNX -> deployable targets, with parity proof."""
