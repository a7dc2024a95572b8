"""Lower-precision variants of an exported graph: int8 (dynamic or static) for the CPU provider,
fp16 for CUDA.

int8: ORT's dynamic quantisation. The weights of every linear layer (MatMul, the pooler's and
classifier's Gemm, fused Attention) are stored as int8, signed, with one scale per output channel
(per-tensor scales changed more dev predictions when this was chosen);
activations are quantised on the fly per call. Embedding tables (Gather) and LayerNorms stay fp32: the embeddings are a
lookup, not compute, and lose accuracy when quantised. After --optimize, fused Attention becomes
QAttention.
int8-static: ORT's static quantisation in QDQ form: weights int8 per channel as above, and every
MatMul's activations quantised with scales fixed in advance from a calibration set (examples of the
task's training data, min-max), so no scale is computed per call.
fp16: every float tensor and op in half precision except the graph's inputs and outputs (logits stay
fp32 for the caller) and the ops ORT's converter keeps in fp32 by default. Only the CUDA provider has
fast fp16 kernels; on the CPU an fp16 graph is slower than fp32, so export refuses --fp16 without
--device cuda.
Neither variant can meet the fp32 tolerance; the task metric on the dev set is their check.
"""
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from .optimize import quiet_logs

INT8_OPS = ["MatMul", "Attention"]
INT8_METHOD = ("ORT dynamic quantisation: int8 weights (signed, per channel) for MatMul/Gemm and Attention, "
               "activations quantised per call; embeddings and LayerNorms fp32")
FP16_METHOD = "ORT float16 conversion (keep_io_types: int64 inputs, fp32 logits)"


INT8_STATIC_METHOD = ("ORT static quantisation (QDQ): int8 weights (signed, per channel) and uint8 activations of "
                      "MatMul with min-max scales calibrated on training examples; embeddings and LayerNorms fp32")


class _Batches:
    """ORT's CalibrationDataReader over a list of feed dicts (numpy int64 arrays by input name)."""

    def __init__(self, feeds: list[dict]):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


def quantize_int8_static(src_path, dst_path, calibration: list[dict], external_data: bool) -> dict:
    """Write the statically quantised int8 variant of the graph at src_path; calibration: feed dicts."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    with quiet_logs():
        quantize_static(str(src_path), str(dst_path), _Batches(calibration), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, use_external_data_format=external_data,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"method": INT8_STATIC_METHOD, "ops": ["MatMul"], "calibration_batches": len(calibration)}


def quantize_int8(src_path, dst_path, external_data: bool) -> dict:
    """Write the int8 variant of the graph at src_path to dst_path."""
    with quiet_logs():
        quantize_dynamic(str(src_path), str(dst_path), op_types_to_quantize=INT8_OPS, weight_type=QuantType.QInt8,
                         per_channel=True, use_external_data_format=external_data,
                         # fused com.microsoft ops defeat ONNX shape inference; their outputs are fp32
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"method": INT8_METHOD, "ops": INT8_OPS}


def to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """The fp16 variant of a graph (plain or fused)."""
    from onnxruntime.transformers.onnx_model import OnnxModel
    wrapped = OnnxModel(model)
    with quiet_logs():
        wrapped.convert_float_to_float16(keep_io_types=True)
    return wrapped.model, {"method": FP16_METHOD}
