"""`sparsify.prune_pretrained`: streaming a Hugging Face checkpoint block by block (docs/streaming.md)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

import sparsify  # noqa: E402
from sparsify import prune_pretrained  # noqa: E402
from sparsify.pruning.sparsity_record import read_record  # noqa: E402
from sparsify.streaming import BlockResult  # noqa: E402

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _llama(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=50, use_cache=False, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config).to(dtype)


def _data(count: int = 4) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 50, (2, 12), generator=generator),
             "attention_mask": torch.ones(2, 12, dtype=torch.long)} for _ in range(count)]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("source") / "llama"
    _llama().save_pretrained(path, max_shard_size="40KB")
    return path


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return dict(AutoModelForCausalLM.from_pretrained(path).state_dict())


def _shard_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.glob("*.safetensors"))}


@pytest.mark.parametrize("criterion", ["sparsegpt", "wanda"])
@pytest.mark.parametrize("pattern", [{}, {"n_m_ratio": (2, 4)}], ids=["50%", "2:4"])
def test_writes_what_in_memory_prune_gives(source: Path, tmp_path: Path, criterion: str, pattern: dict) -> None:
    data = _data()
    target = prune_pretrained(source, tmp_path / "out", 0.5, criterion=criterion, sampler=data, progress=False,
                              **pattern)
    model = AutoModelForCausalLM.from_pretrained(source)
    pruned = sparsify.prune(model, 0.5, criterion=criterion, sampler=data, keep_classifier_dense=True, **pattern)
    reference = pruned.state_dict()
    streamed = _tensors(target)
    assert streamed.keys() == {k for k in reference if "_COREML_" not in k}
    for key, value in streamed.items():
        assert (value - reference[key]).abs().max() <= 1e-5, key
    original = model.state_dict()
    for key, value in streamed.items():
        if any(f".{name}." in key for name in LINEARS):
            assert (value == 0).float().mean() == 0.5, key
            if pattern:
                assert ((value.reshape(value.shape[0], -1, 4) == 0).sum(-1) == 2).all(), key
        else:  # embeddings, norms and the head: untouched
            assert torch.equal(value, original[key]), key
    index = json.loads((target / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 4  # the rest + one shard per block
    pruned.save_pretrained(tmp_path / "in-memory")
    record = read_record(target)
    assert record == read_record(tmp_path / "in-memory")  # the record save_pretrained of a pruned model writes
    assert record["model.layers.2.mlp.down_proj"]["level"] == 0.5 and len(record) == 3 * len(LINEARS)
    assert json.loads((target / "config.json").read_text()) == json.loads((source / "config.json").read_text())


def test_masks_reattach_from_the_record(source: Path, tmp_path: Path) -> None:
    target = prune_pretrained(source, tmp_path / "out", 0.5, criterion="wanda", sampler=_data(), progress=False,
                              n_m_ratio=(2, 4))
    pruner = sparsify.from_pretrained_pruned(AutoModelForCausalLM, target)
    module = pruner.model.get_submodule("model.layers.1.self_attn.q_proj")
    assert module.weight_mask.float().mean() == 0.5
    assert torch.equal(module.weight_mask, module.weight_orig != 0)


def test_interrupted_run_resumes_to_the_same_files(source: Path, tmp_path: Path) -> None:
    data = _data()
    whole = prune_pretrained(source, tmp_path / "whole", 0.5, criterion="sparsegpt", sampler=data, progress=False)
    seen: list[int] = []

    def stop_after_second(result: BlockResult) -> None:
        seen.append(result.index)
        assert result.num_blocks == 3 and result.seconds > 0 and result.peak_rss_bytes > 0
        if result.index == 1:
            raise KeyboardInterrupt  # as Ctrl-C between blocks

    target = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        prune_pretrained(source, target, 0.5, criterion="sparsegpt", sampler=data, progress=False,
                         on_block=stop_after_second)
    assert seen == [0, 1]
    assert not (target / "model.safetensors.index.json").exists()  # from_pretrained cannot open it half done
    manifest = json.loads((target / "sparsify-progress.json").read_text())
    assert [b["index"] for b in manifest["blocks"]] == [0, 1] and not manifest["complete"]
    assert not list(target.glob(".*"))  # no partial file, no activation folder
    (target / ".model-00004-of-00004.safetensors.partial").write_bytes(b"half a shard")  # a crash mid-write
    prune_pretrained(source, target, 0.5, criterion="sparsegpt", sampler=data, progress=False,
                     on_block=lambda r: seen.append(r.index))
    assert seen == [0, 1, 2]  # only the last block was pruned again
    assert _shard_bytes(target) == _shard_bytes(whole)
    assert not list(target.glob(".*"))


def test_a_damaged_finished_shard_is_redone(source: Path, tmp_path: Path, sparsify_logs) -> None:
    data = _data()
    whole = prune_pretrained(source, tmp_path / "whole", 0.5, criterion="wanda", sampler=data, progress=False)
    target = tmp_path / "damaged"

    def stop(result: BlockResult) -> None:
        if result.index == 1:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        prune_pretrained(source, target, 0.5, criterion="wanda", sampler=data, progress=False, on_block=stop)
    shard = target / "model-00003-of-00004.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8] + b"\0" * 8)
    seen: list[int] = []
    prune_pretrained(source, target, 0.5, criterion="wanda", sampler=data, progress=False,
                     on_block=lambda r: seen.append(r.index))
    assert seen == [1, 2]
    assert "shard 'model-00003-of-00004.safetensors' of block 1 does not match the manifest" in sparsify_logs.text
    assert _shard_bytes(target) == _shard_bytes(whole)


def test_a_finished_target_is_left_as_it_is(source: Path, tmp_path: Path) -> None:
    data = _data(2)
    target = prune_pretrained(source, tmp_path / "out", 0.5, criterion="wanda", sampler=data, progress=False)
    before = _shard_bytes(target)
    seen: list[int] = []
    prune_pretrained(source, target, 0.5, criterion="wanda", sampler=data, progress=False,
                     on_block=lambda r: seen.append(r.index))
    assert seen == [] and _shard_bytes(target) == before


def test_activations_spilled_to_disk_give_the_same_files(source: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    data = _data()
    memory = prune_pretrained(source, tmp_path / "memory", 0.5, criterion="sparsegpt", sampler=data, progress=False,
                              offload="memory")
    disk = prune_pretrained(source, tmp_path / "disk", 0.5, criterion="sparsegpt", sampler=data, progress=False,
                            offload="disk")
    caplog.set_level(logging.INFO, logger="sparsify.streaming")
    auto = prune_pretrained(source, tmp_path / "auto", 0.5, criterion="sparsegpt", sampler=data, progress=False,
                            max_activation_bytes=1000)
    assert "more than max_activation_bytes=1000: they go to memory-mapped files" in caplog.text
    assert _shard_bytes(memory) == _shard_bytes(disk) == _shard_bytes(auto)
    assert not (disk / ".sparsify-activations").exists()


def test_bfloat16_checkpoint_stays_bfloat16(tmp_path: Path) -> None:
    source = tmp_path / "bf16"
    _llama(torch.bfloat16).save_pretrained(source)  # one file, no index
    target = prune_pretrained(source, tmp_path / "out", 0.5, criterion="sparsegpt", sampler=_data(),
                              progress=False)
    model = AutoModelForCausalLM.from_pretrained(target)
    original = AutoModelForCausalLM.from_pretrained(source).state_dict()
    assert model.dtype == torch.bfloat16
    for key, value in model.state_dict().items():
        assert value.dtype == original[key].dtype, key
        if any(f".{name}." in key for name in LINEARS):
            assert (value == 0).float().mean() == 0.5, key
        else:
            assert torch.equal(value, original[key]), key


def test_magnitude_and_token_tensors(source: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(source)
    target = prune_pretrained(source, tmp_path / "magnitude", 0.75, progress=False)
    reference = sparsify.prune(model, 0.75, keep_classifier_dense=True).state_dict()
    for key, value in _tensors(target).items():
        assert torch.equal(value, reference[key]), key
    tokens = [d["input_ids"] for d in _data()]
    dicts = [{"input_ids": t} for t in tokens]
    by_tokens = prune_pretrained(source, tmp_path / "tokens", 0.5, criterion="wanda", sampler=tokens, progress=False)
    by_dicts = prune_pretrained(source, tmp_path / "dicts", 0.5, criterion="wanda", sampler=dicts, progress=False)
    assert _shard_bytes(by_tokens) == _shard_bytes(by_dicts)


def test_the_calibration_data_prune_takes(source: Path, tmp_path: Path) -> None:
    """Items with ``position_ids`` [1, T] beside ``input_ids`` [B, T], and a datasets.Dataset, as in memory."""
    positions = [{**d, "position_ids": torch.arange(12).unsqueeze(0)} for d in _data()]
    model = AutoModelForCausalLM.from_pretrained(source)
    reference = sparsify.prune(model, 0.5, criterion="sparsegpt", sampler=positions,
                               keep_classifier_dense=True).state_dict()
    target = prune_pretrained(source, tmp_path / "positions", 0.5, criterion="sparsegpt", sampler=positions,
                              progress=False)
    for key, value in _tensors(target).items():
        assert (value - reference[key]).abs().max() <= 1e-5, key
    datasets = pytest.importorskip("datasets")
    rows = torch.cat([d["input_ids"] for d in _data()])
    table = datasets.Dataset.from_dict({"input_ids": rows.tolist(), "text": ["x"] * len(rows)})
    by_table = prune_pretrained(source, tmp_path / "table", 0.5, criterion="wanda", sampler=table, progress=False)
    by_rows = prune_pretrained(source, tmp_path / "rows", 0.5, criterion="wanda", progress=False,
                               sampler=[{"input_ids": row.unsqueeze(0)} for row in rows])
    assert _shard_bytes(by_table) == _shard_bytes(by_rows)


@pytest.mark.parametrize(("choices", "error", "message"), [
    ({"criterion": "sparsegpt", "scope": "global"}, ValueError, "scope='global' ranks all layers together"),
    ({"criterion": "mfac"}, ValueError, "criterion='mfac' is not layer-wise"),
    ({"criterion": {"kind": "sparsegpt", "asymmetric": True}}, ValueError, "asymmetric=True needs the unpruned"),
    ({"criterion": "wanda", "sampler": None}, ValueError, "criterion 'wanda' needs calibration data"),
    ({"scheduler": None}, TypeError, "do not pass scheduler or target_sparsity"),
    ({"criterion": "wanda", "offload": "gpu"}, ValueError, "offload='gpu' is invalid: allowed 'auto', 'memory'"),
])
def test_refused_settings(source: Path, tmp_path: Path, choices: dict, error: type, message: str) -> None:
    kwargs = {"sampler": _data(1), "progress": False, **choices}
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        prune_pretrained(source, tmp_path / "out", 0.5, **kwargs)


def test_refused_directories(source: Path, tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"not empty and holds no sparsify-progress.json \(it holds \['notes.txt'\]"):
        prune_pretrained(source, occupied, 0.5, progress=False)
    done = prune_pretrained(source, tmp_path / "done", 0.5, progress=False)
    with pytest.raises(ValueError, match=r"holds a run with other settings \(config, sparsity differ\)"):
        prune_pretrained(source, done, 0.6, progress=False)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((source / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"it holds \['pytorch_model.bin'\]: pickled weights are not read"):
        prune_pretrained(pickled, tmp_path / "x", 0.5, progress=False)


@pytest.mark.parametrize("criterion", ["sparsegpt", "wanda"])
def test_prune_default_masking_gives_what_default_masking_gives(source: Path, criterion: str) -> None:
    """`prune()` calibrates with masking="inplace" (no masked float copy of every weight): same result."""
    model = AutoModelForCausalLM.from_pretrained(source)
    data = _data()
    lean = sparsify.prune(model, 0.5, criterion=criterion, sampler=data).state_dict()
    default = sparsify.prune(model, 0.5, criterion=criterion, sampler=data, masking="default").state_dict()
    assert lean.keys() == default.keys()
    for key, value in lean.items():
        assert torch.equal(value, default[key]), key


def test_inverse_factor_overwrite_gives_the_same_factor() -> None:
    from sparsify.criteria.sparsegpt import inverse_factor

    columns = torch.randn(64, 16)
    hessian = columns.t() @ columns / 64
    kept = hessian.clone()
    factor, alive = inverse_factor(hessian, 0.01)
    assert torch.equal(hessian, kept)  # the caller's matrix is left alone by default
    factor2, alive2 = inverse_factor(hessian.clone(), 0.01, overwrite=True)
    assert torch.equal(factor, factor2) and torch.equal(alive, alive2)
    assert torch.allclose(factor.t() @ factor, torch.linalg.inv(kept + 0.01 * kept.diagonal().mean() * torch.eye(16)),
                          atol=1e-4)
