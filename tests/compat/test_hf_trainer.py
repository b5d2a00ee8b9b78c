"""sparsify.compat.hf.PruningCallback inside a real transformers Trainer: tiny GPT-2 and BERT built from
configs, random tokens, a few CPU steps, no download, no reporting integrations."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)
from transformers.pytorch_utils import Conv1D

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.compat.hf import STATE_FILE, PruningCallback


class Tokens(torch.utils.data.Dataset):
    """16 random sequences of 8 tokens; labels are the tokens (LM) or a class per sequence."""

    def __init__(self, classes: int | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (16, 8), generator=generator)
        self.labels = self.ids if classes is None else torch.randint(0, classes, (16,), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16, bos_token_id=0, eos_token_id=0,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    ))


def bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, num_labels=3,
    ))


def arguments(folder: str, **overrides) -> TrainingArguments:
    settings = dict(output_dir=folder, max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2,
                    report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    settings.update(overrides)
    return TrainingArguments(**settings)


GPT2_CONFIG = PrunerConfig(module_type_configs={"Conv1D": ModulePrunerConfig(
    n_m_ratio=(2, 4), criterion={"kind": "snip_momentum", "decay": 0.8}, scheduler={"update_steps": [2, 4, 5]},
)})


def test_gpt2_trains_and_prunes_its_conv1d_layers_to_2_4_with_a_gradient_criterion(tmp_path):
    model = gpt2()
    pruner = Pruner(model, GPT2_CONFIG)
    trainer = Trainer(model=model, args=arguments(str(tmp_path)), train_dataset=Tokens(),
                      callbacks=[PruningCallback(pruner)])
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, Conv1D)}
    trainer.train()  # snip_momentum raises at its first update unless the callback fed it the gradients
    assert pruner.step_count == 6  # one schedule step per optimizer step
    assert trainer.model is model and not hasattr(model.transformer.h[0].attn.c_attn, "weight_orig")  # finalized
    for name, old in before.items():
        weight = model.get_submodule(name).weight.detach()
        runs = (weight.t() == 0).reshape(weight.shape[1], -1, 4).sum(-1)  # runs along input features
        assert bool((runs == 2).all()), name
        kept = weight != 0
        assert not torch.allclose(weight[kept], old[kept])  # it trained
    trainer.save_model(str(tmp_path / "final"))
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "final")
    for name in before:
        assert torch.equal(reloaded.get_submodule(name).weight, model.get_submodule(name).weight)


def test_bert_trains_with_whole_output_rows_pruned_and_gradient_accumulation(tmp_path):
    model = bert()
    config = PrunerConfig(global_config=ModulePrunerConfig(
        target_sparsity=0.5, pattern="1xchannel", scheduler={"update_steps": [1, 2, 3]}), keep_classifier_dense=True)
    pruner = Pruner(model, config)
    trainer = Trainer(model=model, args=arguments(str(tmp_path), gradient_accumulation_steps=2, max_steps=4),
                      train_dataset=Tokens(classes=3), callbacks=[PruningCallback(pruner)])
    trainer.train()
    assert pruner.step_count == 4  # optimizer steps, not batches
    linears = {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert not bool((linears.pop("classifier") == 0).any())
    for name, weight in linears.items():
        assert int((weight == 0).all(1).sum()) == weight.shape[0] // 2, name
        assert int((weight == 0).sum()) == weight.numel() // 2, name


def test_a_resumed_trainer_checkpoint_continues_pruning_exactly(tmp_path):
    def run(folder: str, resume: str | None = None) -> tuple[nn.Module, Pruner]:
        model = gpt2()
        pruner = Pruner(model, GPT2_CONFIG)
        trainer = Trainer(model=model, args=arguments(folder, save_strategy="steps", save_steps=3),
                          train_dataset=Tokens(), callbacks=[PruningCallback(pruner)])
        trainer.train(resume_from_checkpoint=resume)
        return model, pruner

    straight, _ = run(str(tmp_path / "straight"))
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    assert (checkpoint / STATE_FILE).is_file()
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoint-3")
    resumed, pruner = run(str(tmp_path / "resumed"), resume=str(tmp_path / "resumed" / "checkpoint-3"))
    assert pruner.step_count == 6
    for (key, value), other in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(value, other), key  # same weights, masks and metadata as the run never stopped

    os.remove(tmp_path / "resumed" / "checkpoint-3" / STATE_FILE)
    with pytest.raises(FileNotFoundError, match="sparsify_pruner.pt does not exist, so the masks and the schedule"):
        run(str(tmp_path / "resumed"), resume=str(tmp_path / "resumed" / "checkpoint-3"))


def test_the_callback_refuses_a_trainer_that_trains_another_model(tmp_path):
    pruner = Pruner(gpt2(), GPT2_CONFIG)
    trainer = Trainer(model=gpt2(), args=arguments(str(tmp_path)), train_dataset=Tokens(),
                      callbacks=[PruningCallback(pruner)])
    with pytest.raises(ValueError, match="the Trainer trains a GPT2LMHeadModel that is not the pruner's model"):
        trainer.train()
    with pytest.raises(TypeError, match="expects a sparsify.Pruner, got GPT2LMHeadModel"):
        PruningCallback(gpt2())


@pytest.mark.parametrize("finalize_at_end", [False, True])
def test_load_best_model_at_end_restores_the_best_checkpoints_masks_and_weights(tmp_path, caplog, finalize_at_end):
    from safetensors.torch import load_file

    model = gpt2()
    pruner = Pruner(model, GPT2_CONFIG)
    args = arguments(str(tmp_path), save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2,
                     load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=True)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), eval_dataset=Tokens(),
                      callbacks=[PruningCallback(pruner, finalize_at_end=finalize_at_end)])
    with caplog.at_level("WARNING", logger="sparsify"):
        trainer.train()
    if finalize_at_end:  # the best step came before the schedule's end: finalize() says how far it got
        assert any(m.startswith("finalize() at step 2, before the schedule ended") for m in caplog.messages)
    best = trainer.state.best_model_checkpoint
    assert best is not None and best.endswith("checkpoint-2")  # the highest loss: the first, not the last
    step = 2
    saved = torch.load(os.path.join(best, STATE_FILE), weights_only=True)
    weights = load_file(os.path.join(best, "model.safetensors"))
    assert pruner.step_count == step  # the schedule is back at the best checkpoint's step
    for name, target in pruner.targets.items():
        if not finalize_at_end:
            assert torch.equal(target.mask, saved["masks"][name]), name  # its own masks
            assert torch.equal(target.orig, saved["orig"][name]), name
        assert torch.equal(target.module.weight, weights[name + ".weight"]), name  # what the Trainer saved there
    assert torch.equal(model.lm_head.weight, weights["transformer.wte.weight"])  # the rest came from it too
