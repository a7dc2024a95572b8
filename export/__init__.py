"""prunekit.export: the deployable artifact. A prunekit model (dense or compact) -> ONNX, validated
against PyTorch, optionally fused for ONNX Runtime and quantised, and run back through ORT.

    from prunekit.export import export_onnx, OnnxClassifier
    report = export_onnx(model, "out/", optimize=True, quantize="int8")
    logits = OnnxClassifier("out/")(batch)        # same batch dict as the PyTorch model
    logits = OpenVinoClassifier("out/")(batch)    # the same model.onnx in OpenVINO (pip install prunekit[openvino])

Files: onnx_export.py (exporter and pipeline), validate.py (parity), optimize.py (ORT fusion,
per-layer head counts), quantize.py (int8, fp16), runtime.py (ORT sessions, CPU and CUDA; OpenVINO),
portable.py (config.json as stock transformers / Optimum read it, the real structure kept inside).
"""
from .onnx_export import export_onnx, torch_to_onnx
from .runtime import OnnxClassifier, OpenVinoClassifier, open_classifier

__all__ = ["export_onnx", "torch_to_onnx", "OnnxClassifier", "OpenVinoClassifier", "open_classifier"]
