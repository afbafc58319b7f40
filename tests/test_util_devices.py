"""``util.devices``: the one device choice, process-group set-up, half-precision dtype and thread setting."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist

from vanillanet.util.devices import DistInfo, choose_device, half_dtype, num_threads, process_group
from vanillanet.util.errors import ConfigError


def test_choose_device():
    assert choose_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert choose_device(None).type == choose_device("auto").type == want
    with pytest.raises(ConfigError, match="--device must be one of auto, cpu, cuda, got 'tpu'"):
        choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda was given but no CUDA device is visible; use --device"):
            choose_device("cuda")


def test_one_process_gets_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with process_group("cpu") as (dist, device):
        assert dist == DistInfo() and not dist.enabled and dist.main and device.type == "cpu"
        assert not tdist.is_initialized()


def test_a_torchrun_process_starts_and_ends_its_group(monkeypatch, tmp_path):
    """A process of a two-process torchrun job on the CPU (the rendezvous itself replaced): it starts the gloo
    group and ends it."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    started = []
    monkeypatch.setattr(tdist, "init_process_group", lambda backend: started.append(backend))
    monkeypatch.setattr(tdist, "is_initialized", lambda: bool(started))
    ended = []
    monkeypatch.setattr(tdist, "destroy_process_group", lambda: ended.append(True))
    with process_group("cpu") as (dist, device):
        assert (dist.world_size, dist.rank, dist.owns_group, device.type) == (2, 0, True, "cpu")
        assert started == ["gloo"]
    assert ended == [True]


def test_half_dtype():
    assert half_dtype(torch.device("cpu")) == torch.bfloat16
    assert half_dtype(torch.device("cuda")) == torch.float16


def test_num_threads_restores():
    before = torch.get_num_threads()
    with num_threads(1) as n:
        assert n == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with num_threads(None) as n:
        assert n == before


def test_as_device_names_the_argument_and_the_accepted_values():
    from vanillanet.util.devices import as_device

    assert as_device("cpu") == as_device(torch.device("cpu")) == torch.device("cpu")
    for value, message in (("bogus", "device must be 'cpu', 'cuda' or 'cuda:N', got 'bogus'"),
                           ("meta", r"\(the devices this package runs on\), got 'meta'"),
                           ("cuda:99", "no CUDA device is visible" if not torch.cuda.is_available() else
                            "names GPU 99 but")):
        with pytest.raises(ConfigError, match=message):
            as_device(value)
    with pytest.raises(TypeError, match=r"device must be a str or torch.device .*got int 0"):
        as_device(0)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_num_threads_refuses_what_is_not_a_count(threads):
    with pytest.raises(ConfigError, match="threads must be None .* at least 1"):
        with num_threads(threads):
            pass
