import pytest


@pytest.fixture(scope="session")
def oci_registry(trainer_home):
    """A real docker-registry (distribution 2.8) on 127.0.0.1 with htpasswd auth, started the way
    `trainer registry serve` starts it, on a free port; stopped at the end of the session."""
    from trainer.registry import serve

    state, _ = serve.start(port=0)
    yield state
    serve.stop()
