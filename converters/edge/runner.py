"""Run an edge bundle: the script that ships inside every bundle as `run.py`.

It must run on the board itself, so it needs only Python 3.9+, numpy and onnxruntime
(`ai_edge_litert` too, for `.tflite` models) - never `trainer`. It checks the manifest's shape
(every file name plain - no path, no `..`, a known kind - every file a regular file, not a link,
in the bundle folder), every file against its sha256 before loading anything, the input against
the manifest, runs each model, prints the top classes of the first samples (named by the manifest's `labels`)
and writes `<out>/<model>.npy` (first output; more outputs as `<model>.<i>.npy`) plus
`<out>/result.json` (top-k per sample, timings, versions, machine) - nothing outside `<out>`
(default `results/`).

`trainer edge run` runs this file from the installed project with `--bundle`, never a bundle's
own copy: the copy is for people who deploy the bundle, and its checksum, written by whoever
wrote the bundle, proves nothing about what it does.

    python3 run.py --input x.npy                           # all models; results in results/
    python3 run.py --input x.npy --model int8 --repeat 50  # + batch-1 latency p50 over 50 runs
    python3 run.py --input raw.npy --preprocess            # apply the manifest's preprocessing

    python3 run.py --input x.npy --public-key trusted.pub  # refuse unless a trusted key signed it

Signed bundles (issue 22): registration signs `manifest.json` (which holds every file's
sha256) into `manifest.sig` ({keyid, alg: ecdsa-p256-sha256, sig: base64 DER}). With
`--public-key` (repeatable) the runner checks that signature against those keys before it reads
anything else, through the board's own OpenSSL (libcrypto by ctypes: no Python package beyond
numpy and onnxruntime), then every file against the signed checksums.

Exit codes: 0 ok, 2 bad arguments or input, 3 corrupt, unsigned or untrusted bundle, 4 runtime missing or failed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import stat
import sys
import time
from pathlib import Path

FORMAT = "trainer-edge-bundle"
FORMAT_VERSIONS = (1,)
RUNNER_FILE = "run.py"
README_FILE = "README.md"
MODEL_EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite"}
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64")
# Model names become output file names (<name>.npy): letters, digits, _ . - only, no "..".
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BundleError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(bundle: Path, verify: bool = True, public_keys: list[bytes] | None = None) -> dict:
    """The checked manifest; with `public_keys` (PEM) its signature must verify with one of them
    first (the bytes checked are the bytes parsed)."""
    path = bundle / "manifest.json"
    try:
        raw = _read_regular(path)
        if public_keys:
            verify_signature(bundle, raw, public_keys)
        manifest = json.loads(raw)
    except FileNotFoundError:
        raise BundleError(f"no manifest.json in {bundle}: not an edge bundle", 3) from None
    except OSError as e:
        raise BundleError(f"cannot read {bundle}/manifest.json ({e.strerror}; a symlink is not followed)", 3) from None
    except ValueError as e:
        raise BundleError(f"corrupt bundle: manifest.json is not valid JSON ({e})", 3) from None
    if not isinstance(manifest, dict):
        raise BundleError("corrupt bundle: manifest.json is not a JSON object", 3)
    if manifest.get("format") != FORMAT or manifest.get("format_version") not in FORMAT_VERSIONS:
        raise BundleError(f"manifest.json: unsupported bundle format {manifest.get('format')!r} "
                          f"v{manifest.get('format_version')}; this runner reads {FORMAT} "
                          f"v{', v'.join(map(str, FORMAT_VERSIONS))}", 3)
    if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("models"), dict) \
            or not manifest.get("inputs"):
        raise BundleError("corrupt bundle: manifest.json lacks its files/models/inputs tables", 3)
    check_manifest(bundle, manifest)
    if verify:
        for name, entry in sorted(manifest["files"].items()):
            file = bundle / name
            if file.stat().st_size != entry["size"]:
                raise BundleError(f"corrupt bundle: {name} is {file.stat().st_size} bytes, "
                                  f"manifest says {entry['size']}", 3)
            if sha256_of(file) != entry["sha256"]:
                raise BundleError(f"corrupt bundle: {name} sha256 does not match the manifest", 3)
    return manifest


def _read_regular(path: Path, cap: int = 16 << 20) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise BundleError(f"unsafe bundle: {path.name} is not a regular file", 3)
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise BundleError(f"corrupt bundle: {path.name} is over {cap} bytes", 3)
    return data


SIGNATURE_FILE = "manifest.sig"
SIGNATURE_ALG = "ecdsa-p256-sha256"


def verify_signature(bundle: Path, manifest_bytes: bytes, public_keys: list[bytes]) -> str:
    """The id of the key (sha256 of its PEM) whose signature of `manifest_bytes` is in
    `manifest.sig`; BundleError (3) when the bundle is unsigned or no given key signed it."""
    import base64

    try:
        found = json.loads(_read_regular(bundle / SIGNATURE_FILE, 64 << 10))
        sig = base64.b64decode(found["sig"], validate=True)
        if found.get("alg") != SIGNATURE_ALG:
            raise ValueError(found.get("alg"))
    except FileNotFoundError:
        raise BundleError(f"unsigned bundle: no {SIGNATURE_FILE} in {bundle}; refused (a trusted key is "
                          f"required)", 3) from None
    except (ValueError, KeyError, TypeError, OSError):
        raise BundleError(f"corrupt bundle: {SIGNATURE_FILE} is not a {SIGNATURE_ALG} signature", 3) from None
    for pem in public_keys:
        if _openssl_verify(pem, manifest_bytes, sig):
            return hashlib.sha256(pem).hexdigest()
    raise BundleError(f"untrusted bundle: manifest.json's signature (key {str(found.get('keyid'))[:16]}) does "
                      f"not verify with any trusted key; refused before loading any model", 3)


def _libcrypto():
    import ctypes
    import ctypes.util

    names = [n for n in (ctypes.util.find_library("crypto"),) if n] + ["libcrypto.so.3", "libcrypto.so.1.1",
                                                                       "libcrypto.so"]
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        vp = ctypes.c_void_p
        for fn, res, args in (("BIO_new_mem_buf", vp, [ctypes.c_char_p, ctypes.c_int]),
                              ("PEM_read_bio_PUBKEY", vp, [vp, vp, vp, vp]),
                              ("EVP_MD_CTX_new", vp, []), ("EVP_sha256", vp, []),
                              ("EVP_DigestVerifyInit", ctypes.c_int, [vp, vp, vp, vp, vp]),
                              ("EVP_DigestVerify", ctypes.c_int, [vp, ctypes.c_char_p, ctypes.c_size_t,
                                                                  ctypes.c_char_p, ctypes.c_size_t]),
                              ("EVP_MD_CTX_free", None, [vp]), ("EVP_PKEY_free", None, [vp]),
                              ("BIO_free", ctypes.c_int, [vp])):
            f = getattr(lib, fn)
            f.restype, f.argtypes = res, args
        return lib
    raise BundleError("cannot verify the bundle's signature: no libcrypto (OpenSSL) on this machine", 4)


def _openssl_verify(pem: bytes, data: bytes, sig: bytes) -> bool:
    lib = _libcrypto()
    bio = lib.BIO_new_mem_buf(pem, len(pem))
    key = lib.PEM_read_bio_PUBKEY(bio, None, None, None)
    lib.BIO_free(bio)
    if not key:
        raise BundleError("a --public-key is not a PEM public key", 2)
    ctx = lib.EVP_MD_CTX_new()
    try:
        if lib.EVP_DigestVerifyInit(ctx, None, lib.EVP_sha256(), None, key) != 1:
            return False
        return lib.EVP_DigestVerify(ctx, sig, len(sig), data, len(data)) == 1
    finally:
        lib.EVP_MD_CTX_free(ctx)
        lib.EVP_PKEY_free(key)


def check_manifest(bundle: Path, manifest: dict) -> None:
    """Every name and path the manifest gives, before any file is opened: file names plain (no
    folder, no `..`, no absolute path) and of a known kind (`run.py`, `<model>.onnx`,
    `<model>.tflite`), each a regular file directly in the bundle (not a symlink); model names
    safe as output file names; the input spec well-formed."""
    files = manifest["files"]
    for name, entry in files.items():
        if not _plain_file_name(name):
            raise BundleError(f"unsafe bundle: file name {name!r} is not a plain file name (letters, digits, "
                              f"_ . -; no folders, no '..')", 3)
        if name not in (RUNNER_FILE, README_FILE) and not name.endswith(tuple(MODEL_EXTENSIONS.values())):
            raise BundleError(f"unsafe bundle: {name!r} is not a kind of file a bundle holds "
                              f"({RUNNER_FILE}, {README_FILE}, {', '.join('*' + e for e in MODEL_EXTENSIONS.values())})", 3)
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) or \
                not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256", ""))):
            raise BundleError(f"corrupt bundle: manifest entry of {name} lacks its size or sha256", 3)
        try:
            mode = os.lstat(bundle / name).st_mode
        except FileNotFoundError:
            raise BundleError(f"corrupt bundle: {name} is missing", 3) from None
        if not stat.S_ISREG(mode):
            raise BundleError(f"unsafe bundle: {name} is a {'symlink' if stat.S_ISLNK(mode) else 'special file'}, "
                              f"not a regular file", 3)
    for name, entry in manifest["models"].items():
        if not isinstance(name, str) or not MODEL_NAME.match(name) or ".." in name:
            raise BundleError(f"unsafe bundle: model name {name!r} is not a plain name (letters, digits, _ . -)", 3)
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if kind not in MODEL_EXTENSIONS:
            raise BundleError(f"unsafe bundle: model {name!r} has kind {kind!r}; this runner runs "
                              f"{', '.join(MODEL_EXTENSIONS)}", 3)
        if entry.get("file") != name + MODEL_EXTENSIONS[kind] or entry["file"] not in files:
            raise BundleError(f"unsafe bundle: model {name!r} must be the file {name + MODEL_EXTENSIONS[kind]}, "
                              f"listed with its checksum", 3)
    inputs = manifest["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BundleError("corrupt bundle: manifest.json must describe exactly one input", 3)
    spec = inputs[0]
    shape = spec.get("shape")
    if not isinstance(spec.get("name"), str) or spec.get("dtype") not in DTYPES or not isinstance(shape, list) \
            or not all(d is None or (isinstance(d, int) and not isinstance(d, bool) and d > 0) for d in shape):
        raise BundleError(f"corrupt bundle: the input spec must have a name, a dtype of {', '.join(DTYPES)} "
                          f"and a shape of positive ints or nulls", 3)
    labels = manifest.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(v, str) for v in labels)):
        raise BundleError("corrupt bundle: labels must be a list of strings", 3)


def _plain_file_name(name) -> bool:
    return isinstance(name, str) and bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name)) \
        and ".." not in name


def check_input(x, spec: dict):
    import numpy as np

    if x.dtype != np.dtype(spec["dtype"]):
        raise BundleError(f"input {spec['name']!r}: dtype {x.dtype}, model takes {spec['dtype']}", 2)
    shape = spec["shape"]
    if x.ndim != len(shape) or any(d is not None and d != n for d, n in zip(shape, x.shape)):
        want = "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
        raise BundleError(f"input {spec['name']!r}: shape {tuple(x.shape)}, model takes {want} "
                          f"({spec.get('layout', '?')})", 2)


def preprocess(x, steps: dict | None):
    """`(x * scale - mean) / std`, mean/std broadcast along `channel_axis` (default 1)."""
    import numpy as np

    if not steps:
        raise BundleError("--preprocess: the manifest has no preprocessing", 2)
    unknown = sorted(set(steps) - {"scale", "mean", "std", "channel_axis"})
    if unknown:
        raise BundleError(f"--preprocess: this runner cannot apply {', '.join(unknown)}; "
                          "feed already-preprocessed inputs instead", 2)
    x = x.astype(np.float32) * np.float32(steps.get("scale", 1.0))
    axis = steps.get("channel_axis", 1)
    for key in ("mean", "std"):
        if key in steps:
            v = np.asarray(steps[key], dtype=np.float32)
            if v.ndim == 1 and v.size > 1:
                shape = [1] * x.ndim
                shape[axis] = v.size
                v = v.reshape(shape)
            x = x - v if key == "mean" else x / v
    return x


class OnnxModel:
    def __init__(self, path: Path, threads: int):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BundleError(f"onnxruntime is not importable ({e}); pip install onnxruntime", 4) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x):
        return self.session.run(None, {self.input_name: x})


class TfliteModel:
    def __init__(self, path: Path, threads: int):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise BundleError(f"ai_edge_litert is not importable ({e}); pip install ai-edge-litert", 4) from None
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.batch = None

    def __call__(self, x):
        it = self.interpreter
        inp = it.get_input_details()[0]
        if self.batch != x.shape[0]:
            it.resize_tensor_input(inp["index"], list(x.shape))
            it.allocate_tensors()
            self.batch = x.shape[0]
        it.set_tensor(inp["index"], x)
        it.invoke()
        return [it.get_tensor(o["index"]) for o in it.get_output_details()]


KINDS = {"onnx": OnnxModel, "tflite": TfliteModel}


def versions() -> dict:
    import numpy as np

    found = {"python": platform.python_version(), "numpy": np.__version__}
    for module in ("onnxruntime", "ai_edge_litert"):
        try:
            found[module] = __import__(module).__version__
        except (ImportError, AttributeError):  # not installed, or installed without a version: not needed here
            continue
    return found


def run(bundle: Path, x, out: Path | None, models: list[str] | None, threads: int, repeat: int,
        verify: bool, apply_preprocessing: bool, k: int = 3, public_keys: list[bytes] | None = None) -> dict:
    import numpy as np

    manifest = load_manifest(bundle, verify or bool(public_keys), public_keys)
    if apply_preprocessing:
        x = preprocess(x, manifest.get("preprocessing"))
    check_input(x, manifest["inputs"][0])
    chosen = models or list(manifest["models"])
    unknown = [m for m in chosen if m not in manifest["models"]]
    if unknown:
        raise BundleError(f"unknown model {unknown[0]!r}; the bundle has {', '.join(manifest['models'])}", 2)
    result = {"machine": platform.machine(), "versions": versions(), "batch": int(x.shape[0]),
              "models": {}}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        entry = manifest["models"][name]
        t0 = time.perf_counter()
        model = KINDS[entry["kind"]](bundle / entry["file"], threads)
        t1 = time.perf_counter()
        outputs = model(x)
        t2 = time.perf_counter()
        info = {"load_s": t1 - t0, "batch_s": t2 - t1,
                "outputs": [list(o.shape) for o in outputs]}
        if repeat > 0:
            one = x[:1]
            model(one)  # warm-up: first run allocates
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                model(one)
                times.append(time.perf_counter() - t)
            info["latency_ms_p50"] = 1000 * sorted(times)[len(times) // 2]
            info["latency_runs"] = repeat
        top = top_k(outputs[0], k, manifest.get("labels"))
        if top is not None:
            info["top_k"] = top
            for i, row in enumerate(top[:SHOWN_SAMPLES]):
                print(f"{name}: sample {i}: " + ", ".join(f"{c['label']} ({c['score']:.3g})" for c in row))
            if len(top) > SHOWN_SAMPLES:
                print(f"{name}: ... {len(top) - SHOWN_SAMPLES} more samples" + (f" in {out / 'result.json'}" if out else ""))
        if out is not None:
            files = []
            for i, o in enumerate(outputs):
                file = f"{name}.npy" if i == 0 else f"{name}.{i}.npy"
                np.save(out / file, np.asarray(o))
                files.append(file)
            info["files"] = files
        result["models"][name] = info
    if out is not None:
        (out / "result.json").write_text(json.dumps(result, indent=2))
        print(f"results: {out / 'result.json'} (top-{k} per sample, timings) and {out}/<model>.npy (raw outputs)")
    return result


SHOWN_SAMPLES = 5


def top_k(output, k: int, labels: list[str] | None) -> list[list[dict]] | None:
    """Per sample, the k highest-scoring classes of a (N, classes) output, best first:
    {"class": index, "label": name (the index when the bundle has no labels), "score": raw output}.
    None for outputs that are not one score per class."""
    import numpy as np

    y = np.asarray(output)
    if y.ndim != 2 or y.shape[1] < 2 or k < 1:
        return None
    if labels is not None and len(labels) != y.shape[1]:
        labels = None     # names for another head: indices say less, but nothing wrong
    best = np.argsort(-y, axis=1, kind="stable")[:, :k]
    return [[{"class": int(c), "label": labels[c] if labels else str(int(c)), "score": float(y[i, c])} for c in row]
            for i, row in enumerate(best)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run this edge bundle's models on an input .npy")
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent,
                        help="bundle folder (default: the folder this script is in)")
    parser.add_argument("--input", type=Path, required=True, help=".npy file with the input batch")
    parser.add_argument("--out", type=Path, default=Path("results"),
                        help="folder for <model>.npy outputs and result.json (default: results)")
    parser.add_argument("--top-k", type=int, default=3, help="classes shown and saved per sample (default 3)")
    parser.add_argument("--model", action="append", help="run only this model (repeatable)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=0, help="time this many batch-1 runs")
    parser.add_argument("--preprocess", action="store_true",
                        help="apply the manifest's preprocessing to a raw input first")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 checks")
    parser.add_argument("--public-key", type=Path, action="append", default=[],
                        help="a trusted PEM public key (repeatable): the bundle must be signed by one of them")
    args = parser.parse_args(argv)
    try:
        import numpy as np

        keys = []
        for path in args.public_key:
            try:
                keys.append(path.read_bytes())
            except OSError as e:
                raise BundleError(f"cannot read --public-key {path}: {e.strerror}", 2) from None
        if keys:
            load_manifest(args.bundle, True, keys)     # before the input is even read

        try:
            x = np.load(args.input, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BundleError(f"cannot read input {args.input}: {e}", 2) from None
        run(args.bundle, x, args.out, args.model, args.threads, args.repeat,
            not args.no_verify, args.preprocess, args.top_k, keys)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
