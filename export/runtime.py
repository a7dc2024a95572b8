"""Running an exported model: OnnxClassifier (ONNX Runtime) and OpenVinoClassifier (OpenVINO, an
optional extra) take the same batch dict as the PyTorch model and return logits; open_classifier
picks one by name. ORT runs on the CPU provider or, with device="cuda", on the CUDA provider with IO
binding; OpenVINO on the CPU, in fp32.

ONNX Runtime falls back to the CPU provider without failing when CUDA cannot start (missing
libcublas/cudnn, no GPU); it only logs. Here that is an error: asking for CUDA and getting the
CPU is never what the caller meant, and benchmark numbers taken that way would be wrong.
"""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from prunekit.errors import PrunekitError

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
DEVICES = ("cpu", "cuda")
CUDA = "CUDAExecutionProvider"


def onnx_file(path) -> Path:
    """A model directory (holding model.onnx) or an .onnx file -> the .onnx file."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise PrunekitError(f"no ONNX model at {path}")
    return path


def providers_for(device: str) -> list:
    """The provider list for a device; CUDA keeps the CPU provider for nodes CUDA lacks kernels for."""
    if device not in DEVICES:
        raise PrunekitError(f"device must be one of {DEVICES}, not {device!r}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if CUDA not in ort.get_available_providers():
        raise PrunekitError("this onnxruntime build has no CUDA provider; install onnxruntime-gpu for --device cuda")
    return [(CUDA, {"device_id": 0}), "CPUExecutionProvider"]


def new_session(model, device: str = "cpu", threads: int | None = None, spinning: bool = True) -> ort.InferenceSession:
    """An ORT session (model: an .onnx path or serialized bytes) on the given device; raises
    PrunekitError if CUDA was asked for but is not active.

    spinning=False stops idle intra-op threads from busy-waiting after a run: with several sessions
    in one process (a benchmark interleaving models) the spinning threads of one session otherwise
    steal the cores the next session runs on."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device == "cuda":
        opts.log_severity_level = 4  # our own error below says it better than ORT's dlopen message
    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                       providers=providers_for(device))
    except PrunekitError:
        raise
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types, all plain Exceptions
        where = "the model" if isinstance(model, bytes) else model
        raise PrunekitError(f"ONNX Runtime cannot load {where}: {str(e).splitlines()[0]}") from e
    if device == "cuda" and session.get_providers()[0] != CUDA:
        raise PrunekitError("ONNX Runtime could not start its CUDA provider (no GPU, or CUDA/cuDNN libraries "
                            "missing) and would silently run on the CPU; use --device cpu or fix the CUDA install")
    return session


def require_cuda() -> None:
    """Fail early, before any export work, when the CUDA provider cannot really run."""
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "cuda_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    new_session(probe.SerializeToString(), device="cuda")


def as_numpy(value, dtype=np.int64) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(value), dtype=dtype)


class Classifier:
    """What every runtime wrapper shares: the batch dict -> the graph's feeds, and __call__ -> logits.
    A subclass sets path, input_names and output_name and implements run(feeds) -> np.ndarray."""

    path: Path
    input_names: list[str]

    def check_inputs(self) -> None:
        unknown = set(self.input_names) - set(INPUT_NAMES)
        if unknown:
            raise PrunekitError(f"{self.path} has inputs {sorted(unknown)} that a BERT classifier does not take")

    def feeds(self, batch) -> dict:
        if "input_ids" not in batch:
            raise PrunekitError("batch has no input_ids")
        ids = as_numpy(batch["input_ids"])
        out = {}
        for name in self.input_names:
            if name in batch and batch[name] is not None:
                out[name] = as_numpy(batch[name])
            elif name == "token_type_ids":
                out[name] = np.zeros_like(ids)
            elif name == "attention_mask":
                out[name] = np.ones_like(ids)
        return out

    def run(self, feeds: dict) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, batch) -> torch.Tensor:
        return torch.from_numpy(self.run(self.feeds(batch)))


class OnnxClassifier(Classifier):
    """An exported prunekit model behind the PyTorch model's calling convention.

        clf = OnnxClassifier("out/", device="cpu", threads=2)
        logits = clf({"input_ids": ..., "attention_mask": ..., "token_type_ids": ...})  # (B, num_labels)

    Extra keys in the batch (labels, ...) are ignored; a missing token_type_ids means all zeros.
    """

    def __init__(self, path, device: str = "cpu", threads: int | None = None, spinning: bool = True):
        self.path = onnx_file(path)
        self.device = device
        self.session = new_session(self.path, device, threads, spinning)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.check_inputs()

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, feeds: dict) -> np.ndarray:
        if self.device == "cuda":
            return self._run_cuda(feeds)
        return self.session.run([self.output_name], feeds)[0]

    def _run_cuda(self, feeds) -> np.ndarray:
        # IO binding: inputs are copied to the GPU once and the output stays there until the copy
        # back, instead of ORT staging every tensor through host memory per run.
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        binding.bind_output(self.output_name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def openvino_module():
    """openvino, or a PrunekitError saying how to install it (it is an optional extra)."""
    try:
        import openvino
    except ImportError as e:
        raise PrunekitError("OpenVINO is not installed: pip install 'prunekit[openvino]'") from e
    return openvino


class OpenVinoClassifier(Classifier):
    """The same model.onnx run by OpenVINO's CPU plugin, behind the same calling convention.

        clf = OpenVinoClassifier("out/", threads=2)
        logits = clf(batch)

    OpenVINO reads the ONNX file itself (plain, ORT-fused or int8 graphs) and compiles it for the
    CPU with dynamic batch and sequence. Settings, each for a reason:
      INFERENCE_PRECISION_HINT f32  on CPUs with native bf16 (AVX-512 BF16, AMX) OpenVINO's default is
                                    bf16: logits would miss the fp32 parity and depend on the CPU
                                    (measured: bench/results/openvino.md)
      PERFORMANCE_HINT LATENCY, one stream: one request at a time, as ORT's session is timed
      INFERENCE_NUM_THREADS         = threads, when given (ORT's intra_op_num_threads)
    """

    def __init__(self, path, threads: int | None = None):
        ov = openvino_module()
        self.path = onnx_file(path)
        self.device = "cpu"
        properties = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if threads is not None:
            properties["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        try:
            self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", properties)
        except Exception as e:  # OpenVINO raises RuntimeError / GeneralFailure / OpConversionFailure
            raise PrunekitError(f"OpenVINO cannot load {self.path}: {str(e).strip().splitlines()[0]}") from e
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output = self.compiled.outputs[0]
        self.output_name = self.output.get_any_name()
        self.check_inputs()
        self.version = ov.__version__.split("-")[0]

    @property
    def providers(self) -> list[str]:
        return [f"OpenVINO {self.version} CPU ({self.compiled.get_property('INFERENCE_PRECISION_HINT').get_type_name()})"]

    def run(self, feeds: dict) -> np.ndarray:
        # the request's output tensor is reused by the next run: copy it out
        return np.array(self.request.infer(feeds)[self.output], copy=True)


RUNTIMES = ("ort", "openvino")
RUNTIME_NAMES = {"ort": "ONNX Runtime", "openvino": "OpenVINO"}


def runtime_versions(runtimes) -> dict:
    """Versions of the runtimes named beyond ORT (which prunekit.benchmark.environment records)."""
    return {"openvino": openvino_module().__version__} if "openvino" in runtimes else {}


def open_classifier(path, runtime: str = "ort", device: str = "cpu", threads: int | None = None,
                    spinning: bool = True) -> Classifier:
    """model.onnx (a directory or the file) in the named runtime: ONNX Runtime (CPU or CUDA) or
    OpenVINO (CPU). spinning applies to ORT only (OpenVINO's threads do not busy-wait)."""
    if runtime == "ort":
        return OnnxClassifier(path, device, threads, spinning)
    if runtime != "openvino":
        raise PrunekitError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    if device != "cpu":
        raise PrunekitError(f"prunekit runs OpenVINO on the CPU only, not on {device!r}")
    return OpenVinoClassifier(path, threads)


def onnx_predictor(model_dir, device: str = "cpu"):
    """What `prunekit eval` scores for an export directory: (OnnxClassifier, tokenizer, config)."""
    from prunekit.tokenizer import load_tokenizer, require_tokenizer

    from .portable import exported_config
    model_dir = Path(model_dir)
    config = exported_config(model_dir)
    tokenizer = require_tokenizer(load_tokenizer(model_dir), model_dir, "evaluation reads text")
    report = model_dir / "export_report.json"
    if device != "cuda" and report.is_file() and json.loads(report.read_text()).get("variant") == "fp16":
        raise PrunekitError(f"{model_dir} is an fp16 export for the CUDA provider: evaluate it with --device cuda")
    return OnnxClassifier(model_dir, device), tokenizer, config
