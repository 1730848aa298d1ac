"""The ports trainer picks for servers that bind later (Ray's head and node agents, the registry,
MLflow, Prometheus) lie where no port-0 bind can take them first (trainer/ports.py says why)."""
import socket

from trainer import ports


def test_chosen_ports_are_distinct_free_and_outside_the_kernels_range():
    first, last = (int(x) for x in ports.EPHEMERAL.read_text().split())
    chosen = ports.free_ports(200)
    assert len(set(chosen)) == 200
    assert all(ports.LOW <= p < first for p in chosen), (first, sorted(chosen)[:3], sorted(chosen)[-3:])
    for port in chosen[:20]:
        with socket.socket() as s:
            s.bind((ports.HOST, port))


def test_a_port_in_use_is_never_chosen():
    with socket.socket() as s:
        s.bind((ports.HOST, 0))
        s.listen()
        taken = s.getsockname()[1]
        assert ports.free_port(preferred=taken) != taken
    assert ports.free_port(preferred=taken) == taken   # free again: the preferred one is kept


def test_without_room_below_the_kernels_range_the_kernel_chooses(tmp_path, monkeypatch):
    narrow = tmp_path / "range"
    narrow.write_text(f"{ports.LOW + 10}\t60999\n")
    monkeypatch.setattr(ports, "EPHEMERAL", narrow)
    assert ports.chosen_range() == (0, 0)
    assert all(p > 0 for p in ports.free_ports(3))
