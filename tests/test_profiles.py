"""Concurrency from the machine and the backend: slides at once, pool limits, pools."""

import pytest

from pathgen_dagster import profiles
from pathgen_dagster.profiles import Profile, ProfileError, machine_profile
from pathgen_dagster.resources.llm import BACKEND_ENV, agent_pool


def test_slides_at_once_follow_cores_and_memory():
    assert Profile("laptop", cores=2, gpus=0, memory_gib=23.5).slides_at_once == 2
    # A laptop keeps 4 GiB for its desktop: 8 GiB leaves room for 2 slides of 1.5 GiB.
    assert Profile("laptop", cores=8, gpus=0, memory_gib=8.0).slides_at_once == 2
    assert Profile("cpu-node", cores=64, gpus=0, memory_gib=48.0).slides_at_once == 32
    assert Profile("laptop", cores=4, gpus=0, memory_gib=2.0).slides_at_once == 1


def test_the_gpu_pool_exists_only_where_there_is_a_gpu():
    cpu = Profile("cpu-node", cores=16, gpus=0, memory_gib=64.0)
    gpu = Profile("gpu-node", cores=16, gpus=2, memory_gib=64.0)
    assert cpu.encoder_pool == "cpu" and cpu.pool_limits({}) == {"cpu": 16, "llm": 1, "tile_readers": 16}
    assert gpu.encoder_pool == "gpu" and gpu.pool_limits({}) == {"gpu": 2, "llm": 1, "tile_readers": 16}
    assert cpu.pool_limits({"PATHGEN_POOL_LLM": "4"})["llm"] == 4


def test_profile_named_by_environment(monkeypatch: pytest.MonkeyPatch):
    machine_profile.cache_clear()
    monkeypatch.setattr(profiles, "_gpu_count", lambda: 0)
    try:
        monkeypatch.setenv("PATHGEN_PROFILE", "cpu-node")
        assert machine_profile().name == "cpu-node"
        machine_profile.cache_clear()
        monkeypatch.setenv("PATHGEN_PROFILE", "gpu-node")
        with pytest.raises(ProfileError, match="lists no GPU"):
            machine_profile()
        machine_profile.cache_clear()
        monkeypatch.setenv("PATHGEN_PROFILE", "workstation")
        with pytest.raises(ProfileError, match="not a profile"):
            machine_profile()
    finally:
        machine_profile.cache_clear()


def test_agents_take_the_llm_pool_only_where_a_model_server_serves_them(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert agent_pool() == "cpu"  # grounded: in-process CPU work, one step per slide at once
    for backend, pool in (("grounded", "cpu"), ("embedded", "llm"), ("vllm", "llm")):
        monkeypatch.setenv(BACKEND_ENV, backend)
        assert agent_pool() == pool, backend


def test_the_loaded_agents_use_the_backends_pool():
    from pathgen_dagster.definitions import defs

    loaded = defs()
    for name in ("descriptions", "revised_descriptions", "captions", "instructions"):
        assert loaded.resolve_assets_def(name).op.pool == agent_pool(), name
