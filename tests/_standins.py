"""Small stand-in models with the module names real recipes expect (BERT, T5, LLaMA, ResNet, YOLOv5, ...).

Each is built from ``(dotted name, module)`` entries, so a recipe's parameter names and regexes meet
the names of the model it was written for, with tiny widths. The forward pass is a probe, not the
real network: every Linear / Conv / Embedding gets its own input, a fixed random projection of the
batch, and the output is the mean square of all their outputs — enough for gradient criteria and
M-FAC to see a gradient for every weight. Module order is the entry order, which is what INC's
classifier-head rule (the model's last module) looks at.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

Entry = tuple[str, nn.Module]
FEATURES = 64


class StandIn(nn.Module):
    """A model assembled from dotted-name entries, with the probe forward described above."""

    def __init__(
        self,
        entries: list[Entry],
        no_split: tuple[str, ...] = (),
        block_classes: dict[str, str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        block_classes = block_classes or {}
        if no_split:
            self._no_split_modules = list(no_split)
        for name, module in entries:
            parent: nn.Module = self
            parts = name.split(".")
            for depth, part in enumerate(parts[:-1]):
                prefix = ".".join(parts[: depth + 1])
                if part not in parent._modules:
                    cls = block_classes.get(prefix)
                    parent.add_module(part, type(cls, (nn.Module,), {})() if cls else nn.Module())
                parent = parent._modules[part]  # type: ignore[assignment]
            parent.add_module(parts[-1], module)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
        self._probes: list[str] = []
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)):
                width = _input_width(module)
                g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                self.register_buffer(
                    "probe_" + name.replace(".", "__"), torch.randn(FEATURES, width, generator=g), persistent=False
                )
                self._probes.append(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(x.shape[0])
        for name in self._probes:
            module = self.get_submodule(name)
            z = x @ getattr(self, "probe_" + name.replace(".", "__"))
            if isinstance(module, nn.Embedding):
                out = module((z.abs() * 1000).long() % module.num_embeddings)
            else:
                out = module(z.reshape(x.shape[0], *_input_shape(module)))
            total = total + out.float().pow(2).flatten(1).mean(1)
        return total


def _input_shape(module: nn.Module) -> tuple[int, ...]:
    if isinstance(module, nn.Linear):
        return (module.in_features,)
    if isinstance(module, nn.Embedding):
        return (1,)
    kernel = module.kernel_size  # type: ignore[union-attr]
    spatial = tuple(kernel)  # type: ignore[union-attr]
    return (module.in_channels, *spatial)  # type: ignore[union-attr]


def _input_width(module: nn.Module) -> int:
    width = 1
    for size in _input_shape(module):
        width *= size
    return width


def loss(output: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """The probe's loss: its output's mean."""
    return output.mean()


def batches(count: int, batch: int = 4, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` (input, dummy target) batches for the probe forward."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, FEATURES, generator=g), torch.zeros(batch)) for _ in range(count)]


# ----------------------------------------------------------------------------------------------
# Transformers
# ----------------------------------------------------------------------------------------------


def bert(layers: int = 12, head: str | None = "qa", hidden: int = 16, inter: int = 32, prefix: str = "bert") -> StandIn:
    """Hugging Face BERT names; ``head``: ``"qa"`` (qa_outputs), ``"cls"`` (dropout, classifier) or None."""
    p = prefix
    e: list[Entry] = [
        (f"{p}.embeddings.word_embeddings", nn.Embedding(32, hidden)),
        (f"{p}.embeddings.position_embeddings", nn.Embedding(16, hidden)),
        (f"{p}.embeddings.token_type_embeddings", nn.Embedding(2, hidden)),
        (f"{p}.embeddings.LayerNorm", nn.LayerNorm(hidden)),
        (f"{p}.embeddings.dropout", nn.Dropout()),
    ]
    for i in range(layers):
        layer = f"{p}.encoder.layer.{i}"
        e += [(f"{layer}.attention.self.{n}", nn.Linear(hidden, hidden)) for n in ("query", "key", "value")]
        e += [
            (f"{layer}.attention.self.dropout", nn.Dropout()),
            (f"{layer}.attention.output.dense", nn.Linear(hidden, hidden)),
            (f"{layer}.attention.output.LayerNorm", nn.LayerNorm(hidden)),
            (f"{layer}.attention.output.dropout", nn.Dropout()),
            (f"{layer}.intermediate.dense", nn.Linear(hidden, inter)),
            (f"{layer}.output.dense", nn.Linear(inter, hidden)),
            (f"{layer}.output.LayerNorm", nn.LayerNorm(hidden)),
            (f"{layer}.output.dropout", nn.Dropout()),
        ]
    e += [(f"{p}.pooler.dense", nn.Linear(hidden, hidden))]
    if head == "qa":
        e += [("qa_outputs", nn.Linear(hidden, 2))]
    elif head == "cls":
        e += [("dropout", nn.Dropout()), ("classifier", nn.Linear(hidden, 2))]
    return StandIn(e)


BERT_ENCODER = (
    r"bert\.encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|"
    r"intermediate\.dense|output\.dense)"
)


def distilbert(layers: int = 6, hidden: int = 16) -> StandIn:
    e: list[Entry] = [
        ("distilbert.embeddings.word_embeddings", nn.Embedding(32, hidden)),
        ("distilbert.embeddings.position_embeddings", nn.Embedding(16, hidden)),
        ("distilbert.embeddings.LayerNorm", nn.LayerNorm(hidden)),
    ]
    for i in range(layers):
        layer = f"distilbert.transformer.layer.{i}"
        e += [(f"{layer}.attention.{n}", nn.Linear(hidden, hidden)) for n in ("q_lin", "k_lin", "v_lin", "out_lin")]
        e += [
            (f"{layer}.sa_layer_norm", nn.LayerNorm(hidden)),
            (f"{layer}.ffn.lin1", nn.Linear(hidden, 2 * hidden)),
            (f"{layer}.ffn.lin2", nn.Linear(2 * hidden, hidden)),
            (f"{layer}.output_layer_norm", nn.LayerNorm(hidden)),
        ]
    e += [
        ("pre_classifier", nn.Linear(hidden, hidden)),
        ("classifier", nn.Linear(hidden, 2)),
        ("dropout", nn.Dropout()),
    ]
    return StandIn(e)


def t5(blocks: int = 12, gated: bool = False, d: int = 16, ff: int = 32) -> StandIn:
    """T5 names (``gated``: flan-T5's ``wi_0`` / ``wi_1``)."""
    wi = [("wi_0", nn.Linear(d, ff)), ("wi_1", nn.Linear(d, ff))] if gated else [("wi", nn.Linear(d, ff))]

    def ff_entries(prefix: str) -> list[Entry]:
        mods = [
            (f"{prefix}.DenseReluDense.{n}", m)
            for n, m in ([(n, nn.Linear(d, ff)) for n, _ in wi] + [("wo", nn.Linear(ff, d))])
        ]
        return [*mods, (f"{prefix}.layer_norm", nn.LayerNorm(d))]

    def attention(prefix: str, kind: str, bias: bool) -> list[Entry]:
        mods: list[Entry] = [(f"{prefix}.{kind}.{n}", nn.Linear(d, d, bias=False)) for n in "qkvo"]
        if bias:
            mods.append((f"{prefix}.{kind}.relative_attention_bias", nn.Embedding(8, 2)))
        return [*mods, (f"{prefix}.layer_norm", nn.LayerNorm(d))]

    e: list[Entry] = [("shared", nn.Embedding(32, d))]
    for i in range(blocks):
        b = f"encoder.block.{i}"
        e += attention(f"{b}.layer.0", "SelfAttention", i == 0) + ff_entries(f"{b}.layer.1")
    e += [("encoder.final_layer_norm", nn.LayerNorm(d))]
    for i in range(blocks):
        b = f"decoder.block.{i}"
        e += (
            attention(f"{b}.layer.0", "SelfAttention", i == 0)
            + attention(f"{b}.layer.1", "EncDecAttention", False)
            + ff_entries(f"{b}.layer.2")
        )
    e += [("decoder.final_layer_norm", nn.LayerNorm(d)), ("lm_head", nn.Linear(d, 32, bias=False))]
    return StandIn(e)


def llama(layers: int = 2, d: int = 16, ff: int = 32) -> StandIn:
    """LLaMA names; the decoder layers are ``LlamaDecoderLayer`` instances listed in ``_no_split_modules``."""
    e: list[Entry] = [("model.embed_tokens", nn.Embedding(32, d))]
    classes = {}
    for i in range(layers):
        layer = f"model.layers.{i}"
        classes[layer] = "LlamaDecoderLayer"
        e += [(f"{layer}.self_attn.{n}_proj", nn.Linear(d, d, bias=False)) for n in "qkvo"]
        e += [
            (f"{layer}.mlp.gate_proj", nn.Linear(d, ff, bias=False)),
            (f"{layer}.mlp.up_proj", nn.Linear(d, ff, bias=False)),
            (f"{layer}.mlp.down_proj", nn.Linear(ff, d, bias=False)),
            (f"{layer}.input_layernorm", nn.LayerNorm(d)),
            (f"{layer}.post_attention_layernorm", nn.LayerNorm(d)),
        ]
    e += [("model.norm", nn.LayerNorm(d)), ("lm_head", nn.Linear(d, 32, bias=False))]
    return StandIn(e, no_split=("LlamaDecoderLayer",), block_classes=classes)


def opt(layers: int = 2, d: int = 16, ff: int = 32) -> StandIn:
    e: list[Entry] = [
        ("model.decoder.embed_tokens", nn.Embedding(32, d)),
        ("model.decoder.embed_positions", nn.Embedding(16, d)),
    ]
    classes = {}
    for i in range(layers):
        layer = f"model.decoder.layers.{i}"
        classes[layer] = "OPTDecoderLayer"
        e += [(f"{layer}.self_attn.{n}", nn.Linear(d, d)) for n in ("k_proj", "v_proj", "q_proj", "out_proj")]
        e += [
            (f"{layer}.self_attn_layer_norm", nn.LayerNorm(d)),
            (f"{layer}.fc1", nn.Linear(d, ff)),
            (f"{layer}.fc2", nn.Linear(ff, d)),
            (f"{layer}.final_layer_norm", nn.LayerNorm(d)),
        ]
    e += [("model.decoder.final_layer_norm", nn.LayerNorm(d)), ("lm_head", nn.Linear(d, 32, bias=False))]
    return StandIn(e, no_split=("OPTDecoderLayer",), block_classes=classes)


def vit_timm(blocks: int = 12, d: int = 16) -> StandIn:
    e: list[Entry] = [("patch_embed.proj", nn.Conv2d(3, d, 4, 4))]
    for i in range(blocks):
        b = f"blocks.{i}"
        e += [
            (f"{b}.norm1", nn.LayerNorm(d)),
            (f"{b}.attn.qkv", nn.Linear(d, 3 * d)),
            (f"{b}.attn.proj", nn.Linear(d, d)),
            (f"{b}.norm2", nn.LayerNorm(d)),
            (f"{b}.mlp.fc1", nn.Linear(d, 4 * d)),
            (f"{b}.mlp.fc2", nn.Linear(4 * d, d)),
        ]
    e += [("norm", nn.LayerNorm(d)), ("head", nn.Linear(d, 10))]
    return StandIn(e)


# ----------------------------------------------------------------------------------------------
# Vision
# ----------------------------------------------------------------------------------------------


def _conv_bn(name: str, cin: int, cout: int, k: int, conv: str = "conv", bn: str = "bn") -> list[Entry]:
    return [
        (f"{name}.{conv}" if name else conv, nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)),
        (f"{name}.{bn}" if name else bn, nn.BatchNorm2d(cout)),
    ]


def resnet_tv(
    depths: tuple[int, ...] = (2, 2, 2, 2), bottleneck: bool = False, width: int = 16, classes: int = 10
) -> StandIn:
    """torchvision ResNet names (``conv1``, ``layerK.J.convN``, ``downsample.0``, ``fc``) at 1/4 width by default."""
    e: list[Entry] = [("conv1", nn.Conv2d(3, width, 7, 2, 3, bias=False)), ("bn1", nn.BatchNorm2d(width))]
    cin = width
    expansion = 4 if bottleneck else 1
    for stage, blocks in enumerate(depths):
        planes = width * 2**stage
        for j in range(blocks):
            b = f"layer{stage + 1}.{j}"
            if bottleneck:
                e += [
                    (f"{b}.conv1", nn.Conv2d(cin, planes, 1, bias=False)),
                    (f"{b}.bn1", nn.BatchNorm2d(planes)),
                    (f"{b}.conv2", nn.Conv2d(planes, planes, 3, padding=1, bias=False)),
                    (f"{b}.bn2", nn.BatchNorm2d(planes)),
                    (f"{b}.conv3", nn.Conv2d(planes, planes * 4, 1, bias=False)),
                    (f"{b}.bn3", nn.BatchNorm2d(planes * 4)),
                ]
            else:
                e += [
                    (f"{b}.conv1", nn.Conv2d(cin, planes, 3, padding=1, bias=False)),
                    (f"{b}.bn1", nn.BatchNorm2d(planes)),
                    (f"{b}.conv2", nn.Conv2d(planes, planes, 3, padding=1, bias=False)),
                    (f"{b}.bn2", nn.BatchNorm2d(planes)),
                ]
            if j == 0 and (cin != planes * expansion or stage > 0):
                e += [
                    (f"{b}.downsample.0", nn.Conv2d(cin, planes * expansion, 1, bias=False)),
                    (f"{b}.downsample.1", nn.BatchNorm2d(planes * expansion)),
                ]
            cin = planes * expansion
    e += [("avgpool", nn.AdaptiveAvgPool2d(1)), ("fc", nn.Linear(cin, classes))]
    return StandIn(e)


def resnet_sml(depths: tuple[int, ...] = (3, 4, 6, 3), bottleneck: bool = True, width: int = 8) -> StandIn:
    """SparseML's own ResNet names (``input.conv``, ``sections.K.J.convN``, ``identity.conv``, ``classifier.fc``)."""
    e: list[Entry] = _conv_bn("input", 3, width, 7)
    cin = width
    expansion = 4 if bottleneck else 1
    for stage, blocks in enumerate(depths):
        planes = width * 2**stage
        for j in range(blocks):
            b = f"sections.{stage}.{j}"
            if bottleneck:
                e += _conv_bn(b, cin, planes, 1, "conv1", "bn1") + _conv_bn(b, planes, planes, 3, "conv2", "bn2")
                e += _conv_bn(b, planes, planes * 4, 1, "conv3", "bn3")
            else:
                e += _conv_bn(b, cin, planes, 3, "conv1", "bn1") + _conv_bn(b, planes, planes, 3, "conv2", "bn2")
            if j == 0 and cin != planes * expansion:
                e += _conv_bn(f"{b}.identity", cin, planes * expansion, 1)
            cin = planes * expansion
    e += [("classifier.fc", nn.Linear(cin, 10))]
    return StandIn(e)


def mobilenet_sml(width: int = 8) -> StandIn:
    """SparseML's MobileNet v1 names (``sections.K.J.depth.conv`` / ``point.conv``), 1, 2, 2, 6, 2 blocks."""
    e: list[Entry] = _conv_bn("input", 3, width, 3)
    cin = width
    for stage, blocks in enumerate((1, 2, 2, 6, 2)):
        cout = width * 2 ** (stage + 1)
        for j in range(blocks):
            b = f"sections.{stage}.{j}"
            e += [
                (f"{b}.depth.conv", nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)),
                (f"{b}.depth.bn", nn.BatchNorm2d(cin)),
            ]
            e += _conv_bn(f"{b}.point", cin, cout, 1)
            cin = cout
    e += [("classifier.fc", nn.Linear(cin, 10))]
    return StandIn(e)


def mnist_net() -> StandIn:
    """SparseML's MNIST net names (``blocks.N.conv``, ``classifier.fc``), small."""
    e: list[Entry] = []
    cin = 1
    for i, cout in enumerate((4, 8, 8, 16)):
        e += _conv_bn(f"blocks.{i}", cin, cout, 3)
        cin = cout
    e += [("classifier.fc", nn.Linear(cin, 10))]
    return StandIn(e)


def _c3(name: str, cin: int, cout: int, n: int) -> list[Entry]:
    hidden = cout // 2
    e = _conv_bn(f"{name}.cv1", cin, hidden, 1) + _conv_bn(f"{name}.cv2", cin, hidden, 1)
    e += _conv_bn(f"{name}.cv3", 2 * hidden, cout, 1)
    for k in range(n):
        e += _conv_bn(f"{name}.m.{k}.cv1", hidden, hidden, 1) + _conv_bn(f"{name}.m.{k}.cv2", hidden, hidden, 3)
    return e


def yolov5s(version: int = 6, width: int = 8) -> StandIn:
    """Ultralytics YOLOv5s names at 1/4 width: v5 layout (Focus, SPP) or v6 (6x6 stem, SPPF); 80 classes."""
    w = [width * 2**i for i in range(5)]  # 8, 16, 32, 64, 128
    e: list[Entry] = _conv_bn(
        "model.0.conv" if version == 5 else "model.0", 12 if version == 5 else 3, w[0], 3 if version == 5 else 6
    )
    e += _conv_bn("model.1", w[0], w[1], 3) + _c3("model.2", w[1], w[1], 1)
    e += _conv_bn("model.3", w[1], w[2], 3) + _c3("model.4", w[2], w[2], 3 if version == 5 else 2)
    e += _conv_bn("model.5", w[2], w[3], 3) + _c3("model.6", w[3], w[3], 3)
    e += _conv_bn("model.7", w[3], w[4], 3)
    if version == 5:
        e += _conv_bn("model.8.cv1", w[4], w[4] // 2, 1) + _conv_bn("model.8.cv2", w[4] * 2, w[4], 1)
        e += _c3("model.9", w[4], w[4], 1)
    else:
        e += _c3("model.8", w[4], w[4], 1)
        e += _conv_bn("model.9.cv1", w[4], w[4] // 2, 1) + _conv_bn("model.9.cv2", w[4] * 2, w[4], 1)
    e += _conv_bn("model.10", w[4], w[3], 1) + _c3("model.13", w[4], w[3], 1)
    e += _conv_bn("model.14", w[3], w[2], 1) + _c3("model.17", w[3], w[2], 1)
    e += _conv_bn("model.18", w[2], w[2], 3) + _c3("model.20", w[3], w[3], 1)
    e += _conv_bn("model.21", w[3], w[3], 3) + _c3("model.23", w[4], w[4], 1)
    e += [(f"model.24.m.{i}", nn.Conv2d(c, 255, 1)) for i, c in enumerate((w[2], w[3], w[4]))]
    return StandIn(e)


def inc_conv_model() -> StandIn:
    """The model of INC's test_conv_pruning.py: conv1 = Conv1d(4, 4, 2), act, conv2, linear = Linear(32, 3)."""
    return StandIn(
        [("conv1", nn.Conv1d(4, 4, 2)), ("act", nn.ReLU()), ("conv2", nn.Conv1d(4, 4, 2)), ("linear", nn.Linear(32, 3))]
    )


def mobilenet_v2_tv() -> nn.Module:
    """torchvision's MobileNetV2 at width 0.25 (its real names and forward), 3 classes."""
    import torchvision

    return torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=3)
