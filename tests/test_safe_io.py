"""The one safe reader: size, alias and depth limits, no objects, local tags, lines, Markdown."""

from __future__ import annotations

import io

import pytest

from sparsify.compat.sparseml.expressions import evaluate_expression, evaluate_recipe
from sparsify.safe_io import SourceError, Tagged, line_of, load_yaml, load_yaml_text, read_text, yaml_from_markdown

# the classic "billion laughs": 9 levels of 9 aliases, 10^9 strings once expanded
BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
)


def test_alias_bomb_is_refused_before_it_expands() -> None:
    assert len(BOMB.encode()) < 600
    with pytest.raises(SourceError, match=r"bomb\.yaml:\d+: the document expands to more than 1,000,000 values"):
        load_yaml_text(BOMB, "bomb.yaml")
    # aliases are fine while the expansion is small
    assert load_yaml_text("a: &x [1, 2]\nb: *x\n").data == {"a": [1, 2], "b": [1, 2]}
    with pytest.raises(SourceError, match="more than 20 values"):
        load_yaml_text("a: &x [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nb: [*x, *x]\n", max_nodes=20)


def test_recursive_alias_deep_nesting_and_size_are_refused(tmp_path) -> None:
    with pytest.raises(SourceError, match=r"^line 1: the alias \*x refers to a node that contains it"):
        load_yaml_text("a: &x [1, *x]")
    with pytest.raises(SourceError, match="nests deeper than 100 levels"):
        load_yaml_text("[" * 150 + "]" * 150)
    # libyaml's own limit (PyYAML >= 6.0.2) or, where it has none, the event count's
    with pytest.raises(SourceError, match="line 1: (invalid YAML: .*nesting depth|the document nests deeper)"):
        load_yaml_text("[" * 5000 + "]" * 5000)
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * 2000 + "\n")
    with pytest.raises(SourceError, match=r"big\.yaml: the file is 2,004 bytes; the limit is 1,000 bytes"):
        load_yaml(big, max_bytes=1000)
    with pytest.raises(SourceError, match="more than 1,000 bytes"):
        read_text(io.StringIO("x" * 5000), max_bytes=1000)
    with pytest.raises(ValueError, match="max_bytes=0 is invalid"):
        read_text(io.StringIO(""), max_bytes=0)


def test_no_python_objects_only_tagged_data() -> None:
    with pytest.raises(SourceError, match=r"x\.yaml:2: invalid YAML: could not determine a constructor for the tag "
                                          r"'tag:yaml\.org,2002:python/object/apply:os\.system'"):
        load_yaml_text("ok: 1\nbad: !!python/object/apply:os.system ['echo hi']\n", "x.yaml")
    data = load_yaml_text("pruners:\n  - !Pruner\n      prune_type: basic_magnitude\n  - !Scalar 3\n").data
    assert data["pruners"][0] == Tagged("Pruner", {"prune_type": "basic_magnitude"})
    assert data["pruners"][0].line == 2 and data["pruners"][1] == Tagged("Scalar", "3")
    with pytest.raises(SourceError, match=r"^c\.yaml:1: invalid YAML: could not determine a constructor for the tag "
                                          r"'!Pruner': only plain YAML data is read"):
        load_yaml_text("a: !Pruner {x: 1}", "c.yaml", local_tags=False)


def test_lines_duplicates_and_syntax_errors_name_the_place(tmp_path) -> None:
    loaded = load_yaml_text("a: 1\nb:\n  - x\n  - y\na: 2\n", "f.yaml")
    assert loaded.data == {"a": 2, "b": ["x", "y"]}
    assert line_of(loaded.data, "b") == 2 and line_of(loaded.data["b"], 1) == 4
    assert loaded.duplicates == [("a", 5)]
    with pytest.raises(SourceError, match=r"^f\.yaml:3: invalid YAML: .*"):
        load_yaml_text("a: 1\nb: [1,\nc: }\n", "f.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"a: 1\nb: \xff\n")
    with pytest.raises(SourceError, match=r"bin\.yaml:2: not UTF-8 text"):
        load_yaml(binary)


def test_markdown_front_matter_and_fenced_blocks_keep_line_numbers(tmp_path) -> None:
    card = "<!-- licence -->\n\n---\nmodifiers:\n  - !GMPruningModifier\n    x: 1\n---\n\n# Title\n"
    text = yaml_from_markdown(card)
    assert text.splitlines()[3] == "modifiers:" and text.count("\n") == card.count("\n")
    path = tmp_path / "card.md"
    path.write_text(card)
    loaded = load_yaml(path)
    assert loaded.data["modifiers"][0].line == 5
    readme = "# M-FAC\n\nText.\n\n```yaml\npruning_modifiers:\n  - !MFACPruningModifier\n    a: 1\n```\n"
    assert load_yaml_text(yaml_from_markdown(readme)).data["pruning_modifiers"][0].line == 7
    with pytest.raises(SourceError, match="no recipe found"):
        yaml_from_markdown("# nothing here\n", "x.md")
    with pytest.raises(SourceError, match=r"x\.md:2: the ```yaml block opened here is never closed"):
        yaml_from_markdown("#\n```yaml\na: 1\n", "x.md")


def test_expressions_are_arithmetic_over_recipe_variables_only() -> None:
    variables = {"num_epochs": 3, "q": 2, "mask": "unstructured", "w": 0.5}
    assert evaluate_expression("num_epochs - q", variables) == 1
    assert evaluate_expression("max(num_epochs, 10) * w + round(2.6) // 1 % 5 ** 2 - -1", variables) == 9.0
    assert evaluate_expression("mask", variables) == "unstructured"
    for text, message in [
        ("__import__('os').system('x')", "Call is not allowed"),
        ("num_epochs.real", "Attribute is not allowed"),
        ("[1][0]", "Subscript is not allowed"),
        ("9 ** 9 ** 9", "too large"),
        ("10.0 ** 400", "cannot be computed"),
        ("1 / 0", "division by zero"),
        ("1 +", "not a valid expression"),
        ("+".join(["1"] * 150), "more than 200 syntax nodes"),
        ("1" * 600, "600 characters is refused"),
    ]:
        with pytest.raises(ValueError, match=message):
            evaluate_expression(text, variables)
    with pytest.raises(KeyError, match="an undefined variable 'nope'"):
        evaluate_expression("nope + 1", variables)
    with pytest.raises(KeyError, match="a non-numeric variable 'mask'"):
        evaluate_expression("mask + 1", variables)


def test_recipe_variables_resolve_in_any_order_and_cycles_are_named() -> None:
    data = load_yaml_text("b: eval(a * 2)\na: eval(c + 1)\nc: 1\nmods_modifiers:\n  - !M\n    x: eval(b)\n").data
    out = evaluate_recipe(data, "r.yaml")
    assert out["b"] == 4 and out["mods_modifiers"][0] == Tagged("M", {"x": 4})
    cyclic = load_yaml_text("a: eval(b)\nb: eval(a)\nmodifiers: []\n").data
    with pytest.raises(SourceError, match=r"^r\.yaml:1: variable a: eval\(b\) uses an undefined variable 'b' "
                                          r"\(a cycle, or a name the recipe does not define\)"):
        evaluate_recipe(cyclic, "r.yaml")
    bad = load_yaml_text("a: 1\nmodifiers:\n  - !M\n    x: eval(a.__class__)\n").data
    with pytest.raises(SourceError, match=r"^r\.yaml:4: eval\(a\.__class__\): Attribute is not allowed"):
        evaluate_recipe(bad, "r.yaml")
