"""``sparsify prune`` on saved models: a Hugging Face directory written back as one (with sparsity.json and the
tokenizer), a torch.export program written back as one; no TorchScript needed."""

from __future__ import annotations

import json

import pytest
import torch
from _lms import tiny_llama
from torch import nn
from transformers import LlamaForCausalLM

from sparsify.cli import main


@pytest.fixture
def llama_dir(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # a word-level vocabulary: ids < 96
    from transformers import PreTrainedTokenizerFast

    model = tiny_llama()
    model.save_pretrained(tmp_path / "src")
    text = "def add(a, b):\n    return a + b\n" * 40
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([text], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path / "src")
    (tmp_path / "calib.txt").write_text(text)
    return tmp_path, model


def test_a_hugging_face_directory_in_a_directory_out(llama_dir, capsys) -> None:
    root, model = llama_dir
    out = root / "out"
    assert main(["prune", str(root / "src"), "--criterion", "wanda", "--n-m", "2:4", "--calibration",
                 str(root / "calib.txt"), "--seq-len", "8", "--samples", "4", "-o", str(out)]) == 0
    assert {"config.json", "model.safetensors", "sparsity.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    pruned = LlamaForCausalLM.from_pretrained(out)
    up = pruned.model.layers[1].mlp.up_proj.weight
    assert int((up == 0).sum()) == up.numel() // 2
    assert torch.equal(pruned.lm_head.weight, model.lm_head.weight)
    record = json.loads((out / "sparsity.json").read_text())
    assert len(record["layers"]) == 14 and record["layers"]["model.layers.0.self_attn.q_proj"]["n_m_ratio"] == [2, 4]
    assert main(["prune", str(root / "src"), "--sparsity", "0.5", "-o", str(out)]) == 1
    assert "exists and is not empty; pass --force" in capsys.readouterr().err
    assert main(["prune", str(root / "src"), "--criterion", "sparsegpt", "--sparsity", "0.5", "-o",
                 str(root / "x")]) == 1
    assert "criterion 'sparsegpt' needs calibration data" in capsys.readouterr().err
    assert main(["prune", str(root / "src"), "--sparsity", "0.6", "--force", "-o", str(out)]) == 0  # magnitude
    again = LlamaForCausalLM.from_pretrained(out)
    assert float((again.model.layers[0].self_attn.o_proj.weight == 0).float().mean()) == pytest.approx(0.6, abs=1e-3)


def test_a_torch_export_program_in_a_program_out(tmp_path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(2, 8)
    torch.export.save(torch.export.export(net, (x,)), str(tmp_path / "net.pt2"))
    assert main(["prune", str(tmp_path / "net.pt2"), "--sparsity", "0.75", "-o", str(tmp_path / "out.pt2")]) == 0
    program = torch.export.load(str(tmp_path / "out.pt2"))
    weights = {k: v for k, v in program.state_dict.items() if k.endswith("weight")}
    assert {k: int((v == 0).sum()) for k, v in weights.items()} == {"0.weight": 96, "2.weight": 48}
    pruned = program.module()
    with torch.no_grad():
        net[0].weight.copy_(weights["0.weight"])
        net[2].weight.copy_(weights["2.weight"])
    torch.testing.assert_close(pruned(x), net(x))
