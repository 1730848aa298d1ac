"""Runtime images, built here from `images/<runtime>/Dockerfile` and the same lock as the venvs.

    engine.py     the container tools (buildah, podman, skopeo, mmdebstrap) as subprocesses
    base.py       the local Debian base and uv images a build takes where no registry has them
    build.py      `trainer image build`: build args, labels, build-time mounts (CA, pip cache)
    inventory.py  the images here (labels, digest, size) and the lock check inside one
    push.py       an image to an OCI registry (buildah push, digest read back with skopeo)
"""
