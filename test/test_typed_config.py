"""The one typed-dataclass YAML loader behind the model, data and training configs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from labeldistill_ros.typed_config import build, read_yaml, to_plain


class Bad(ValueError):
    pass


@dataclass
class Inner:
    size: tuple[int, int] = (2, 3)
    names: tuple[str, ...] = ()


@dataclass
class Outer:
    root: str
    lr: float = 1.0
    steps: Optional[int] = None
    flag: bool = False
    extra: dict = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    source: str = "<dict>"


def make(data):
    return build(Outer, data, source="x.yaml", error=Bad, skip=("source",))


def test_types_are_converted_and_round_trip():
    cfg = make({"root": Path("/d"), "lr": 2, "steps": None, "inner": {"size": [4, 5], "names": ["a", "b"]},
                "extra": {"k": 1}})
    assert cfg == Outer(root="/d", lr=2.0, steps=None, inner=Inner((4, 5), ("a", "b")), extra={"k": 1})
    assert isinstance(cfg.lr, float) and isinstance(cfg.inner.size, tuple)
    plain = to_plain(cfg, drop=("source",))
    assert plain["inner"] == {"size": [4, 5], "names": ["a", "b"]} and "source" not in plain
    assert make(plain) == cfg
    assert make({"root": "r", "steps": 7}).steps == 7


@pytest.mark.parametrize("data, needle", [
    ({"root": "r", "inner": {"sise": [1, 2]}}, "unknown key 'inner.sise'; did you mean 'inner.size'?"),
    ({"root": "r", "source": "y"}, "unknown key 'source'"),  # set by loaders, never a YAML key
    ({}, "missing required key 'root'"),
    ({"root": "r", "lr": "fast"}, "'lr' must be a number, got 'fast'"),
    ({"root": "r", "lr": True}, "'lr' must be a number"),
    ({"root": "r", "steps": 2.5}, "'steps' must be an integer, got 2.5"),
    ({"root": "r", "flag": "yes"}, "'flag' must be true or false"),
    ({"root": "r", "inner": {"size": [1, 2, 3]}}, "'inner.size' must have 2 entries, got 3"),
    ({"root": "r", "inner": {"names": ["a", 3]}}, "'inner.names[1]' must be a string, got 3"),
    ({"root": "r", "inner": [1]}, "'inner' must be a mapping of Inner settings"),
    ({"root": "r", "extra": [1]}, "'extra' must be a mapping"),
    ([1, 2], "the top level must be a mapping of Outer settings"),
])
def test_errors_name_the_source_the_key_and_the_fix(data, needle):
    with pytest.raises(Bad) as err:
        make(data)
    assert str(err.value).startswith("x.yaml: ") and needle in str(err.value), str(err.value)


def test_read_yaml(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml(tmp_path / "empty.yaml", Bad, "test config") == {}
    (tmp_path / "a.yaml").write_text("root: /d\ninner: {size: [1, 1]}\n")
    assert make(read_yaml(tmp_path / "a.yaml", Bad, "test config")).inner.size == (1, 1)
    (tmp_path / "bad.yaml").write_text("root: [unclosed\n")
    with pytest.raises(Bad, match="not valid YAML"):
        read_yaml(tmp_path / "bad.yaml", Bad, "test config")
    with pytest.raises(Bad, match="cannot read test config"):
        read_yaml(tmp_path / "missing.yaml", Bad, "test config")
    (tmp_path / "unsafe.yaml").write_text("root: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(Bad, match="not valid YAML"):  # safe_load: no object construction
        read_yaml(tmp_path / "unsafe.yaml", Bad, "test config")
