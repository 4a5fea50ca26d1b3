"""Reading a parameters file: YAML's safe loader with a size cap, no repeated key and no alias bomb.

Core: imports nothing of the project but `errors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cxrstudy.errors import InputError


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (plain YAML keeps the last silently), and
    an alias (*name) may name a single value only: with aliases of lists or mappings a few lines expand to billions
    of values (an alias bomb); with these, what is built stays the size of the file."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if not isinstance(self.anchors.get(event.anchor), yaml.ScalarNode | None):
                raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} names a list or a mapping; "
                                                  "aliases may name single values only", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file of at most 256 KiB, refusing repeated keys and aliases of a list or a mapping (an alias bomb:
    refused before anything is expanded); `InputError` names the file and the line."""
    if path.stat().st_size > 256 << 10:  # params.yaml is a few KB
        raise InputError(f"{path}: {path.stat().st_size:,} bytes; a parameters file is a few KB (at most 256 KiB)")
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to be a parameters file") from None
