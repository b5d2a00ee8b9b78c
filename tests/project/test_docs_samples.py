"""Every ```python sample in README.md and docs/ runs, as a reader would run it.

The samples of a page run in order in one fresh interpreter (later samples use what earlier ones made), in
an empty folder. Where a page says "your model" or "your data", `PROVIDED` runs first and hands the page
exactly the names listed, nothing else (not even ``import torch``): a sample that forgets an import fails.
`SKIPPED` lists the samples that do not run yet, each with the reason; the list only shrinks.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)

# page -> (code run before the page, the names from it the page may use)
PROVIDED: dict[str, tuple[str, tuple[str, ...]]] = {
    "docs/export.md": ("""
        import torch
        from torch import nn
        model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10))
    """, ("model",)),
    "docs/coreai.md": ("""
        import torch
        from torch import nn
        model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10))
        example = torch.randn(1, 3, 32, 32)
    """, ("model", "example")),
    "docs/inc.md": ("""
        import torch
        import torch.nn.functional as F
        from torch.utils.data import DataLoader, TensorDataset
        from sparsify.demo.models import SmallCNN
        torch.manual_seed(0)
        model = SmallCNN((1, 8, 8))
        loader = DataLoader(TensorDataset(torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))), batch_size=16)
        loss_fn = F.cross_entropy
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    """, ("model", "loader", "loss_fn", "optimizer")),
    "docs/streaming.md": ("""
        import torch
        from transformers import AutoModelForCausalLM, LlamaConfig
        torch.manual_seed(0)
        config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=50, use_cache=False)
        AutoModelForCausalLM.from_config(config).save_pretrained("llama-dense", max_shard_size="40KB")
        windows = [{"input_ids": torch.randint(0, 50, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
                   for _ in range(4)]
    """, ("windows",)),
    "docs/reports.md": ("""
        import torch
        from sparsify.demo.models import SmallCNN
        torch.manual_seed(0)
        model = SmallCNN((1, 8, 8))
        val_x, val_y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    """, ("model", "val_x", "val_y")),
}

# (page, sample number from 1) -> why it is skipped. Shrink this list; never grow it.
SKIPPED: dict[tuple[str, int], str] = {
}


def samples(page: Path) -> list[tuple[int, int, str]]:
    """``(number, line, code)`` of every ```python block of ``page``."""
    text = page.read_text(encoding="utf-8")
    return [(number, text.count("\n", 0, match.start(1)) + 1, match.group(1))
            for number, match in enumerate(FENCE.finditer(text), start=1)]


def _page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


PAGES_WITH_SAMPLES = [page for page in PAGES if samples(page)]

# Extras a page may need; without them its samples are skipped (with `pip install -e ".[dev]"` all are there).
OPTIONAL = {"transformers": "hf", "torchvision": "vision", "matplotlib": "plot", "sklearn": "data",
            "coreai_opt": "coreai", "coreai": "coreai", "coreai_torch": "coreai"}


def missing_extras(codes: list[str]) -> list[str]:
    """The optional packages the samples import that are not installed."""
    names = set()
    for code in codes:
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return sorted(f"{name} (extra '{OPTIONAL[name]}')" for name in names & set(OPTIONAL)
                  if importlib.util.find_spec(name) is None)

RUNNER = """
import sys, traceback
namespace = {"__name__": "__main__"}
provided, names = PROVIDED
if provided:
    setup = {"__name__": "__setup__"}
    exec(compile(provided, "<provided>", "exec"), setup)
    namespace.update({name: setup[name] for name in names})
for number, line, code, skip in SAMPLES:
    if skip:
        print(f"-- sample {number} (line {line}) skipped: {skip}", flush=True)
        continue
    print(f"-- sample {number} (line {line})", flush=True)
    try:
        exec(compile(code, f"{PAGE} sample {number} (line {line})", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED: {PAGE} sample {number}, line {line}", file=sys.stderr)
        sys.exit(1)
print("-- all samples ran", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_SAMPLES, ids=_page_id)
def test_page_samples_run(page: Path, tmp_path: Path) -> None:
    page_id = _page_id(page)
    provided, names = PROVIDED.get(page_id, ("", ()))
    found = [(number, line, code, SKIPPED.get((page_id, number), "")) for number, line, code in samples(page)]
    if all(skip for *_, skip in found):
        pytest.skip(f"every sample of {page_id} is in SKIPPED")
    missing = missing_extras([code for _, _, code, skip in found if not skip])
    if missing:
        pytest.skip(f"{page_id} needs {', '.join(missing)}, not installed")
    script = "\n".join([
        "import torch; torch.set_num_threads(1); del torch",  # the suite runs two processes on two cores
        f"PAGE = {page_id!r}",
        f"PROVIDED = ({textwrap.dedent(provided)!r}, {names!r})",
        f"SAMPLES = {found!r}",
        RUNNER,
    ])
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert "-- all samples ran" in result.stdout


def test_skip_list_names_real_samples() -> None:
    """A stale entry (the sample moved or was removed) would silently skip nothing: refuse it."""
    counts = {_page_id(page): len(samples(page)) for page in PAGES}
    for (page_id, number), reason in SKIPPED.items():
        assert page_id in counts and 1 <= number <= counts[page_id], (page_id, number, reason)
    assert set(PROVIDED) <= set(counts)


def test_samples_are_found() -> None:
    """The extraction itself: README's import sample, getting started's first loop."""
    readme = samples(ROOT / "README.md")
    assert len(readme) == 1 and "from sparsify import MagnitudePruner" in readme[0][2]
    first = samples(ROOT / "docs" / "getting-started.md")[0]
    assert first[1] > 1 and "pruner.step()" in first[2] and "```" not in first[2]
