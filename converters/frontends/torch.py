"""`--from torch`: PyTorch model -> ONNX with the official exporter.

Loads, by default, only formats that carry no code (see converters.frontends.torch_formats): an
ExportedProgram (`.pt2`, `torch.export.save`, checked before torch opens it) or an MLflow
pytorch-flavor folder in the `pt2` serialization format. A pickled module (`torch.save(model)`,
MLflow `serialization_format="pickle"`) and a TorchScript archive run code from the file when
they load, so they are refused with one line naming `--trust-pickle`; with it they load as
before and the report records the opt-in. A state dict alone is refused (no architecture).

Exports with the dynamo exporter (`torch.onnx.export(..., dynamo=True)`, one file, dynamic
batch); when that fails, the TorchScript exporter (`dynamo=False`, `dynamic_axes`), with the
reason recorded in `ExportResult.notes`. When both fail on operators without an ONNX
translation, every such operator is listed at once (UnsupportedOpsError).
"""
from __future__ import annotations

import contextlib
import io
import re
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from converters.base import ExportResult, ModelInput, Frontend
from converters.frontends import torch_formats as formats
from converters.sources import fmt_shape
from trainer.errors import ConversionError, UnsupportedOpsError, first_line

_LAYOUTS = {2: "NC", 3: "NTC", 4: "NCHW", 5: "NCDHW"}
_LEGACY_OP = re.compile(r"Exporting the operator '([\w:.]+)'")
TRUST_FLAG = "--trust-pickle"
_RESAVE = "save it with torch.export.save (.pt2)"


class TorchFrontend(Frontend):
    name = "torch"
    runtime = "torch"

    def __init__(self):
        # (path, size, mtime, trusted) -> (model, notes): a file replaced in place is loaded again,
        # and a model loaded under --trust-pickle is never handed to an untrusted call.
        self._models: dict[tuple, tuple[object, list[str]]] = {}
        self._trusted: dict[Path, bool] = {}
        self._modules: dict[int, tuple] = {}

    # -- loading -------------------------------------------------------------------------
    def admit(self, model: Path, trust_pickle: bool = False) -> list[str]:
        """Load the model under `trust_pickle` now (refusing formats that carry code unless it is
        set); what the report should say about it."""
        model = Path(model).resolve()
        self._trusted[model] = bool(trust_pickle)
        return list(self._entry(model)[1])

    def load(self, model: Path):
        """The model as an eval-mode `nn.Module` (ExportedPrograms are kept as such)."""
        return self._entry(Path(model).resolve())[0]

    def _entry(self, model: Path):
        trusted = self._trusted.get(model, False)
        try:
            st = model.stat()
            key = (model, st.st_size, st.st_mtime_ns, trusted)
        except OSError:
            key = (model, None, None, trusted)
        if key not in self._models:
            self._models[key] = self._load(model, trusted)
        return self._models[key]

    def _load(self, model: Path, trusted: bool) -> tuple[object, list[str]]:
        if model.is_dir():
            if not (model / "MLmodel").is_file():
                raise ConversionError(f"torch: {model} is a folder but not an MLflow model (no MLmodel file)")
            return self._load_mlflow(model, trusted)
        if not model.is_file():
            raise ConversionError(f"torch: model file not found: {model}")
        if not zipfile.is_zipfile(model):
            raise ConversionError(f"torch: {model.name} is not a TorchScript, torch.save'd or .pt2 "
                                  f"model (not a zip archive: truncated or corrupt?)")
        try:
            kind = formats.classify(model)
        except (zipfile.BadZipFile, OSError) as err:
            raise ConversionError(f"torch: cannot read {model.name} (truncated or corrupt?): "
                                  f"{first_line(err)}") from err
        return self._load_file(model, kind, model.name, trusted)

    def _load_file(self, path: Path, kind: str, shown: str, trusted: bool) -> tuple[object, list[str]]:
        import torch

        if kind == formats.PT2:
            return self._load_pt2(path, shown, trusted)
        if kind == formats.TORCHSCRIPT:
            if not trusted:
                raise ConversionError(f"torch: {shown} is a TorchScript archive: its code runs when it loads "
                                      f"and can read and write files; {_RESAVE}, or pass {TRUST_FLAG} if you "
                                      f"trust its source")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # jit.load's deprecation notice
                    loaded = torch.jit.load(str(path), map_location="cpu").eval()
            except Exception as err:
                raise ConversionError(f"torch: cannot load {shown} (truncated or corrupt?): "
                                      f"{first_line(err)}") from err
            return loaded, [f"{TRUST_FLAG}: loaded a TorchScript archive (its code ran in this process)"]
        if kind != formats.TORCH_SAVE:
            raise ConversionError(f"torch: {shown} is a zip archive but not a TorchScript, torch.save'd or "
                                  f".pt2 model")
        try:
            plain = formats.weights_only(path)
        except Exception as err:
            raise ConversionError(f"torch: cannot load {shown} (truncated or corrupt?): "
                                  f"{first_line(err)}") from err
        if plain:
            raise ConversionError(f"torch: {shown} holds only weights (a state_dict or tensors) and the "
                                  f"architecture is not known here; {_RESAVE}")
        if not trusted:
            raise ConversionError(f"torch: {shown} is a pickled torch model (torch.save(model)): loading it "
                                  f"runs code from the file; {_RESAVE}, or pass {TRUST_FLAG} if you trust "
                                  f"its source")
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as err:
            raise ConversionError(f"torch: cannot load {shown} (truncated or corrupt?): "
                                  f"{first_line(err)}") from err
        if not isinstance(obj, torch.nn.Module):
            raise ConversionError(f"torch: {shown} holds a {type(obj).__name__}, not an nn.Module")
        return obj.eval(), [f"{TRUST_FLAG}: unpickled a torch.save'd model (its code ran in this process)"]

    def _load_pt2(self, path: Path, shown: str, trusted: bool) -> tuple[object, list[str]]:
        import torch

        try:
            formats.check_pt2(path)
            refusal = None
        except formats.CodeInModel as err:
            refusal = str(err)
        except Exception as err:  # zip CRC / zlib / OS errors of a damaged archive
            raise ConversionError(f"torch: cannot read {shown} (truncated or corrupt?): "
                                  f"{first_line(err)}") from err
        if refusal and not trusted:
            raise ConversionError(f"torch: {shown} is not a code-free ExportedProgram: {refusal}; pass "
                                  f"{TRUST_FLAG} if you trust its source")
        try:
            with _quiet():
                program = torch.export.load(str(path))
        except Exception as err:
            raise ConversionError(f"torch: {shown} is not a loadable ExportedProgram (.pt2): "
                                  f"{first_line(err)}") from err
        if not trusted:
            try:
                formats.check_graph(program)
            except formats.CodeInModel as err:
                raise ConversionError(f"torch: {shown} is not a code-free ExportedProgram: {err}; pass "
                                      f"{TRUST_FLAG} if you trust its source") from None
            return program, []
        if refusal:
            return program, [f"{TRUST_FLAG}: loaded an ExportedProgram that is not code-free ({refusal})"]
        return program, [f"{TRUST_FLAG} given; the model is a code-free ExportedProgram and did not need it"]

    def _load_mlflow(self, folder: Path, trusted: bool) -> tuple[object, list[str]]:
        """An MLflow pytorch-flavor folder: `data/model.pt2` (pt2 format) through the same checks
        as a .pt2 file; `data/model.pth` (pickle format: a pickled module or TorchScript) only
        with --trust-pickle, through MLflow's loader (its code paths, its pickle module)."""
        data = _mlflow_model_data(folder)
        shown = f"MLflow model {folder.name}"
        if (data / "model.pt2").is_file():
            return self._load_pt2(data / "model.pt2", f"{shown} (pt2 format)", trusted)
        pth = data / "model.pth"
        if not pth.is_file():
            raise ConversionError(f"torch: {shown} has neither data/model.pt2 nor data/model.pth")
        what = "TorchScript" if zipfile.is_zipfile(pth) and formats.classify(pth) == formats.TORCHSCRIPT \
            else "pickled"
        if not trusted:
            raise ConversionError(f"torch: {shown} is in the pickle serialization format ({what}): loading it "
                                  f"runs code from the model; log it with serialization_format='pt2', or "
                                  f"pass {TRUST_FLAG} if you trust its source")
        import mlflow.pytorch

        try:
            loaded = mlflow.pytorch.load_model(str(folder), map_location="cpu")
        except Exception as err:
            raise ConversionError(f"torch: cannot load the MLflow model {folder}: {first_line(err)}") from err
        if callable(getattr(loaded, "eval", None)):   # modules always have it; a pickled function does not
            loaded = loaded.eval()
        return loaded, [f"{TRUST_FLAG}: loaded an MLflow model in the pickle format ({what}; its code ran "
                        f"in this process)"]

    def module(self, model: Path):
        """A callable nn.Module (an ExportedProgram's `.module()`)."""
        import torch

        m = self.load(model)
        if isinstance(m, torch.export.ExportedProgram):
            key = id(m)
            if key not in self._modules:
                self._modules = {key: (m, m.module())}   # the program stays alive with its module
            m = self._modules[key][1]
        return m

    # -- optional hooks (see converters.registry) --------------------------------------
    def input_shape(self, model: Path) -> tuple[int | None, ...] | None:
        """What the model declares it takes (ExportedProgram, MLflow signature); None = not
        declared (a plain module: a wrong shape then shows when the model is first run)."""
        import torch

        model = Path(model)
        if model.is_dir():
            shape = _mlflow_input_shape(model)
            if shape:
                return shape
        m = self.load(model)
        if isinstance(m, torch.export.ExportedProgram):
            for spec in m.graph_signature.input_specs:
                if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT:
                    node = next(n for n in m.graph.nodes if n.name == spec.arg.name)
                    val = node.meta.get("val")
                    if val is not None:
                        return tuple(d if isinstance(d, int) else None for d in val.shape)
            return None
        return None

    def example_input(self, model: Path) -> np.ndarray | None:
        model = Path(model)
        if model.is_dir() and (model / "MLmodel").is_file():
            try:
                from mlflow.models import Model

                ex = Model.load(str(model)).load_input_example(str(model))
                return None if ex is None else np.asarray(ex, dtype=np.float32)
            except Exception:
                return None
        return None

    # -- protocol ------------------------------------------------------------------------
    def export(self, model: Path, out_dir: Path, sample: np.ndarray) -> ExportResult:
        import torch

        out_dir.mkdir(parents=True, exist_ok=True)
        dst = out_dir / "model.onnx"
        loaded = self.load(model)
        module = self.module(model)
        # A batch of >= 2 so the exporter does not specialise the batch dim to 1.
        x = torch.from_numpy(_batch_of(sample, 2))
        outputs = list(_named_outputs(self._check_runs(module, x)))
        notes: list[str] = []
        names = dict(input_names=["input"], output_names=outputs,
                     dynamic_axes={"input": {0: "batch"}, **{o: {0: "batch"} for o in outputs}})
        try:
            with _quiet():
                torch.onnx.export(module, (x,), str(dst), dynamo=True, external_data=False,
                                  optimize=True, **names)
            exporter = f"torch.onnx {torch.__version__} (dynamo)"
        except Exception as dynamo_err:
            reason = first_line(dynamo_err)
            cause = dynamo_err.__cause__ or dynamo_err.__context__
            if cause is not None and "Exception summary" in str(dynamo_err):
                summary = str(dynamo_err).split("## Exception summary", 1)[1].strip().splitlines()
                reason = summary[0] if summary else reason
            notes.append(f"dynamo exporter failed ({reason}); used the TorchScript exporter")
            dst.unlink(missing_ok=True)
            try:
                scripted = loaded if isinstance(loaded, torch.jit.ScriptModule) else module
                with _quiet():
                    torch.onnx.export(scripted, (x,), str(dst), dynamo=False, opset_version=17, **names)
                exporter = f"torch.onnx {torch.__version__} (TorchScript)"
            except Exception as ts_err:
                dst.unlink(missing_ok=True)
                ops = _unsupported_ops(module, x)
                ops += _LEGACY_OP.findall(str(ts_err))
                if ops:
                    raise UnsupportedOpsError("torch", ops) from ts_err
                raise ConversionError(f"torch: export failed with both exporters: dynamo: {reason}; "
                                      f"TorchScript: {first_line(ts_err)}") from ts_err
        import onnx

        proto = onnx.load(str(dst))
        graph_inputs = [i for i in proto.graph.input
                        if i.name not in {init.name for init in proto.graph.initializer}]
        if len(graph_inputs) != 1:
            raise ConversionError(f"torch: the exported model has {len(graph_inputs)} inputs; "
                                  f"conversion handles one-input models")
        shape = (None, *sample.shape[1:])
        inputs = [ModelInput(graph_inputs[0].name, shape, _LAYOUTS.get(len(shape), "N" + "?" * (len(shape) - 1)))]
        return ExportResult(dst, inputs, exporter, notes)

    def predict(self, model: Path, inputs: np.ndarray) -> np.ndarray:
        return self.runner(model)(inputs)

    def runner(self, model: Path) -> Callable[[np.ndarray], np.ndarray]:
        import torch

        module = self.module(model)

        def run(x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
            with torch.inference_mode():
                outs = [_named_outputs(module(torch.from_numpy(np.ascontiguousarray(x[i:i + 512], np.float32))))
                        for i in range(0, len(x), 512)]
            joined = {k: np.concatenate([o[k].detach().numpy() for o in outs]) for k in outs[0]}
            return joined["output"] if list(joined) == ["output"] else joined

        return run

    def layer_outputs(self, model: Path, inputs: np.ndarray, names: list[str]) -> dict[str, np.ndarray] | None:
        """The outputs of the named submodules (`head.1`: the exporter's name scopes) on `inputs`,
        captured with forward hooks; an ExportedProgram is unflattened back into its module
        hierarchy first. None for TorchScript (no hooks)."""
        import torch

        loaded = self.load(model)
        if isinstance(loaded, torch.jit.ScriptModule):
            return None
        if isinstance(loaded, torch.export.ExportedProgram):
            with _quiet():
                root = torch.export.unflatten(loaded)
        else:
            root = self.module(model)
        wanted = set(names)
        got: dict[str, list[np.ndarray]] = {}
        handles = []

        def keep(name):
            def hook(_module, _inputs, output):
                if isinstance(output, (tuple, list, dict)):
                    output = _first_output(output)
                if isinstance(output, torch.Tensor) and output.is_floating_point():
                    got.setdefault(name, []).append(output.detach().float().numpy().copy())
            return hook

        for name, sub in root.named_modules():
            if name in wanted:
                handles.append(sub.register_forward_hook(keep(name)))
        try:
            with torch.inference_mode(), _quiet():
                for i in range(0, len(inputs), 512):
                    root(torch.from_numpy(np.ascontiguousarray(inputs[i:i + 512], np.float32)))
        finally:
            for h in handles:
                h.remove()
        n_batches = -(-len(inputs) // 512)
        return {k: np.concatenate(v) for k, v in got.items() if len(v) == n_batches}

    def _check_runs(self, module, x):
        import torch

        try:
            with torch.inference_mode():
                return module(x)
        except Exception as err:
            takes = _infer_from_first_layer(module)
            takes = f" but its first layer takes {fmt_shape(takes, batch=True)}" if takes else ""
            raise ConversionError(f"torch: the model does not run on inputs of shape "
                                  f"{fmt_shape(tuple(x.shape), batch=True)}{takes}: "
                                  f"{first_line(err)}") from err


def _named_outputs(out) -> dict:
    """A model's outputs by the names the ONNX export gives them: one tensor is `output`; a
    tuple/list of tensors `output_0`, `output_1`, ...; a dict of tensors keeps its keys. Anything
    nested is judged by its first tensor (as `output`)."""
    import torch

    if isinstance(out, torch.Tensor):
        return {"output": out}
    if isinstance(out, (tuple, list)) and len(out) > 1 and all(isinstance(o, torch.Tensor) for o in out):
        return {f"output_{i}": o for i, o in enumerate(out)}
    if (isinstance(out, dict) and len(out) > 1 and all(isinstance(k, str) for k in out)
            and all(isinstance(v, torch.Tensor) for v in out.values())):
        return dict(out)
    return {"output": _first_output(out)}


def _first_output(out):
    import torch

    while isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if not isinstance(out, torch.Tensor):
        raise ConversionError(f"torch: the model returns {type(out).__name__}, not a tensor")
    return out


def _batch_of(sample: np.ndarray, n: int) -> np.ndarray:
    sample = np.asarray(sample, dtype=np.float32)
    if len(sample) >= n:
        return np.ascontiguousarray(sample[:n])
    return np.ascontiguousarray(np.concatenate([sample] * n)[:n])


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warnings; keep them off the user's terminal."""
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        warnings.simplefilter("ignore")
        import logging

        level = logging.getLogger("torch").level
        logging.getLogger("torch").setLevel(logging.ERROR)
        try:
            yield buf
        finally:
            logging.getLogger("torch").setLevel(level)


def _unsupported_ops(module, x) -> list[str]:
    """Every op in the decomposed graph that the ONNX registry has no translation for.

    The dynamo exporter stops at the first op it cannot translate; this runs the same capture
    and decomposition and asks the dispatcher about every node, so all are reported at once.
    Uses torch.onnx internals (checked on torch 2.13); on failure returns what it could find.
    """
    import torch

    try:
        from torch.onnx._internal.exporter import _core, _dispatching, _registration

        with _quiet():
            registry = _registration.ONNXRegistry.from_torchlib()
            ep = torch.export.export(module, (x,), strict=False)
            ep = _core._prepare_exported_program_for_export(ep, registry=registry)
        ops = []
        for node in ep.graph.nodes:
            if node.op == "call_function":
                fn, _ = _dispatching.dispatch(node, registry)
                if fn is None:
                    ops.append(str(node.target))
        return ops
    except Exception:
        return []


def _infer_from_first_layer(module) -> tuple[int | None, ...] | None:
    """A hint for error messages only (a model may reshape its input before the first layer)."""
    import torch.nn as nn

    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(m)]
            return (None, m.in_channels, *([None] * dims))
        if isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)):
            return (None, None, m.input_size) if m.batch_first else None
        if isinstance(m, nn.Embedding):
            return None
    return None


def _mlflow_input_shape(model_dir: Path) -> tuple[int | None, ...] | None:
    try:
        from mlflow.models import Model

        sig = Model.load(str(model_dir)).signature
        if sig is None or sig.inputs is None:
            return None
        specs = sig.inputs.inputs
        if len(specs) != 1 or not hasattr(specs[0], "shape"):
            return None
        return tuple(None if d == -1 else int(d) for d in specs[0].shape)
    except Exception:
        return None


def _mlflow_model_data(folder: Path) -> Path:
    """The pytorch flavor's data folder named in MLmodel, which must lie inside the model."""
    import yaml

    try:
        meta = yaml.safe_load((folder / "MLmodel").read_text()) or {}
        conf = (meta.get("flavors") or {}).get("pytorch") or {}
    except (yaml.YAMLError, AttributeError, OSError) as err:
        raise ConversionError(f"torch: {folder / 'MLmodel'} is not a readable MLmodel: {first_line(err)}") from None
    data = (folder / str(conf.get("model_data", "data"))).resolve()
    if not data.is_relative_to(folder.resolve()):
        raise ConversionError(f"torch: {folder / 'MLmodel'} points its model data outside the model folder")
    return data
