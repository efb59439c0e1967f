"""Block → ONNX, verified against PyTorch on real inputs."""

from legocompile.export.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, ExportResult, export_block, output_names

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "ExportResult", "export_block", "output_names"]
