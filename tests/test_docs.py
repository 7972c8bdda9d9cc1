"""The examples of the docs run as written (with a small dataset)."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import small_shipped_network

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(doc: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)


def test_the_library_example_loads_predicts_by_the_networks_rule(tmp_path, capsys):
    code, = python_blocks(ROOT / "docs" / "library.md")
    checkpoint = small_shipped_network(tmp_path / "net.pth", objects_per_class=7)  # 4 test
    data = tmp_path / "data"
    data.mkdir()
    for name, value in (("CHECKPOINT", checkpoint), ("DATA", data)):
        code, n = re.subn(rf"^{name} = .*$", f"{name} = Path({str(value)!r})", code, flags=re.M)
        assert n == 1, name
    scope = {}
    exec(compile(code, "docs/library.md", "exec"), scope)
    printed = capsys.readouterr().out
    assert "decides by mean-logit" in printed, printed
    assert (data / "snn_test3.h5").is_file()
    from rsnn_bfd.network.readout import class_scores
    out = scope["out"]
    assert out.decision == "mean-logit"
    # the network's rule, not the published one: the mean logits' argmax
    assert scope["classes"].tolist() == class_scores(out, "mean-logit").argmax(1).tolist()
