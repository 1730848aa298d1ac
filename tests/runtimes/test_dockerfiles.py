"""images/<runtime>/Dockerfile: parsed with BuildKit's parser (the `dockerfile` package) and held
to the image policy; each installs the lock file its local runtime is built from, in the lock's
`gpu` variant: the same versions as the venv except the framework's build (and its CUDA wheels)."""
from __future__ import annotations

import re
import tomllib

import dockerfile
import pytest

from trainer import runtimes
from trainer.home import repo_root
from trainer.runtimes.lock import normalize

RUNTIME_NAMES = sorted(runtimes.RUNTIMES)
FRAMEWORK_PIN = {"torch": "torch", "tensorflow": "tensorflow-cpu", "mxnet": "mxnet"}       # the venv's build
GPU_BUILD = {"torch": "torch", "tensorflow": "tensorflow", "mxnet": "mxnet-cu117"}        # the image's
CUDA_WHEEL = re.compile(r"^(nvidia-.*-cu\d+|cuda-toolkit|cuda-bindings|triton)$")
SECRETISH = re.compile(r"PASS(WORD)?|SECRET|TOKEN|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL", re.I)
PIPE_TO_SHELL = re.compile(r"\b(curl|wget)\b[^;&]*\|\s*(sudo\s+)?(ba|z|da)?sh\b")


def _parse(name: str) -> list:
    return list(dockerfile.parse_file(str(repo_root() / "images" / name / "Dockerfile")))


def _pairs(values: tuple[str, ...]) -> dict[str, str]:
    """LABEL/ENV values come as (k1, v1, k2, v2, ...), quotes kept."""
    return {k: v.strip('"') for k, v in zip(values[::2], values[1::2])}


def _args(commands) -> dict[str, str]:
    found = {}
    for c in commands:
        if c.cmd == "ARG":
            for v in c.value:
                key, _, default = v.partition("=")
                found[key] = default.strip('"')
    return found


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def _final_stage(commands) -> list:
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return commands[last_from:]


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_dockerfile_follows_the_image_policy(name):
    commands = _parse(name)
    args = _args(commands)
    final = _final_stage(commands)

    base = _expand(final[0].value[0], args)
    assert re.match(r"^(nvidia/cuda|pytorch/pytorch|tensorflow/tensorflow):[\w.-]+$", base), base
    for c in commands:
        if c.cmd == "FROM":
            image = _expand(c.value[0], args)
            assert ":" in image and not image.endswith(":latest"), f"unpinned base {image}"

    users = [c for c in final if c.cmd == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].value[0] not in ("root", "0") and not users[-1].value[0].startswith("0:")
    last_run = max(i for i, c in enumerate(final) if c.cmd == "RUN")
    assert final.index(users[-1]) > last_run, "USER must come after the last RUN"

    labels = {}
    for c in final:
        if c.cmd == "LABEL":
            labels.update({k: _expand(v, args) for k, v in _pairs(c.value).items()})
    for key in ("title", "description", "source", "version", "licenses", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"missing org.opencontainers.image.{key}"
    pins = runtimes.parse_lock(runtimes.lock_path(name), "gpu")
    assert labels["io.trainer.ray.version"] == pins["ray"]
    assert labels["io.trainer.framework.version"] == f"{GPU_BUILD[name]}=={pins[GPU_BUILD[name]]}"
    assert labels["io.trainer.variant"] == args["VARIANT"] == "gpu"
    assert labels["io.trainer.python.version"].startswith(runtimes.RUNTIMES[name].python + ".")
    assert labels["io.trainer.runtime"] == name

    for c in commands:
        if c.cmd in ("ENV", "ARG"):
            keys = _pairs(c.value) if c.cmd == "ENV" else {v.partition("=")[0]: "" for v in c.value}
            bad = [k for k in keys if SECRETISH.search(k)]
            assert not bad, f"{c.cmd} looks like a secret: {bad}"
        if c.cmd == "RUN":
            assert not PIPE_TO_SHELL.search(" ".join(c.value)), f"pipe-to-shell in: {c.original}"
        assert not (c.cmd == "ADD" and any(v.startswith("http") for v in c.value)), "ADD of a URL"


def _lock_install(name: str) -> tuple[str, str]:
    """(source the Dockerfile COPYs the lock from, path it copies it to), checking that pip
    resolves only the lock's VARIANT, rendered from that copy by trainer's own lock reader
    (trainer/runtimes/lockfile.py, copied in as a script), and that the project goes in --no-deps."""
    final = _final_stage(_parse(name))
    copies = [c for c in final if c.cmd == "COPY" and any(v.endswith("requirements.lock") for v in c.value)]
    assert len(copies) == 1, "the lock must be copied exactly once"
    *sources, dest = copies[0].value
    reader = [c for c in final if c.cmd == "COPY" and c.value[0] == "trainer/runtimes/lockfile.py"]
    assert len(reader) == 1, "the lock reader must be copied in"
    script = reader[0].value[-1]
    installs = [" ".join(c.value) for c in final if c.cmd == "RUN" and "pip install" in " ".join(c.value)]
    with_r = [cmd for cmd in installs if re.search(r"\s-r\s", cmd)]
    assert len(with_r) == 1, installs
    rendered = re.search(r"\s-r\s+(\S+)", with_r[0]).group(1)
    render = re.search(rf"python\s+{re.escape(script)}\s+{re.escape(dest)}\s+--variant\s+\$\{{?VARIANT\}}?\s*"
                       rf"\\?\s*>\s*{re.escape(rendered)}\s", with_r[0])
    assert render, f"pip must install the variant rendered from {dest}: {with_r[0]}"
    assert with_r[0].index(render.group(0)) < with_r[0].index("pip install")
    for cmd in installs:
        if cmd is not with_r[0]:
            assert "--no-deps" in cmd, f"a pip install besides the lock must use --no-deps: {cmd}"
    assert len(sources) == 1
    return sources[0], dest


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_dockerfile_installs_the_same_lock_as_the_local_runtime(name):
    source, _ = _lock_install(name)
    # runtimes.lock_path is what `trainer runtime install` builds the venv from.
    assert repo_root() / source == runtimes.lock_path(name)
    assert runtimes.lock_path(name).is_file()


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_image_and_venv_carry_the_same_versions_except_the_build_variant(name):
    """The venv installs the lock's base, the image its gpu variant: every pin is the same except
    the framework's build (same version, GPU distribution) and the CUDA wheels only a GPU build
    needs."""
    lock = runtimes.lock_path(name)
    assert runtimes.lock_variants(name) == {"cpu", "gpu"}
    venv, image = runtimes.parse_lock(lock), runtimes.parse_lock(lock, "gpu")
    cpu_build, gpu_build = FRAMEWORK_PIN[name], GPU_BUILD[name]
    assert image[gpu_build] == venv[cpu_build], "the image's framework is another version than the venv's"
    only_venv = set(venv) - set(image)
    only_image = set(image) - set(venv)
    assert only_venv <= {cpu_build}, only_venv
    assert {p for p in only_image if p != gpu_build and not CUDA_WHEEL.match(p)} == set(), only_image
    changed = {p: (venv[p], image[p]) for p in set(venv) & set(image) if venv[p] != image[p]}
    assert changed == {}, f"versions differ between venv and image: {changed}"


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_locks_are_fully_pinned_and_use_the_projects_ray(name):
    project = tomllib.loads((repo_root() / "pyproject.toml").read_text())
    ray_pin = next(d for d in project["project"]["dependencies"] if d.startswith("ray"))
    project_ray = ray_pin.split("==", 1)[1]
    lock = runtimes.lock_path(name)
    pins = runtimes.parse_lock(lock)
    assert pins["ray"] == project_ray
    loose = [ln for ln in lock.read_text().splitlines()
             if ln.strip() and not ln.startswith("#") and "==" not in ln]
    assert not loose, f"{lock.name} has unpinned lines: {loose}"


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_locks_satisfy_the_core_dependencies(name):
    """`trainer` goes into every runtime with --no-deps: its lock must already hold its deps."""
    from packaging.requirements import Requirement

    project = tomllib.loads((repo_root() / "pyproject.toml").read_text())
    pins = runtimes.parse_lock(runtimes.lock_path(name))
    unmet = []
    for dep in project["project"]["dependencies"]:
        req = Requirement(dep)
        have = pins.get(normalize(req.name))
        if have is None or not req.specifier.contains(have, prereleases=True):
            unmet.append(f"{dep} (lock has {have or 'nothing'})")
    assert not unmet, f"images/{name}/requirements.lock misses core deps: {unmet}"
