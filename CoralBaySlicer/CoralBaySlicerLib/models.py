"""The engine's model catalog as the module's model selector shows it.

The catalog (`coralbay.bundle.catalog`) imports only the standard library, so the module lists models in
Slicer's own process, before PyTorch is installed. Entries are normalised here into `ModelEntry`
so that the selector does not depend on how the catalog represents a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass(frozen=True)
class ModelEntry:
    name: str
    title: str
    task: str
    path: str = ""
    structures: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    # The bundle's label table (names, colours, terminology codes) when the catalog gave it:
    # the Interactive section names, colours and codes its structures from it.
    labels: Any = field(default=None, compare=False)

    @property
    def segments(self) -> bool:
        return self.task.lower().startswith("seg")

    @property
    def classifies(self) -> bool:
        return self.task.lower().startswith(("class", "cls"))

    def display_name(self) -> str:
        kind = "segmentation" if self.segments else "classification" if self.classifies else self.task
        title = self.title if self.title and self.title != self.name else self.name
        return f"{title} ({kind})" if kind else title


def entry_from_catalog(item: Any) -> ModelEntry:
    """One catalog entry as ModelEntry: a dict as `coralbay models --json` prints it, or a catalog
    object (the engine's Manifest, whose `summary()` is that dict)."""
    table = None
    if not isinstance(item, dict):
        table = getattr(item, "labels", None)
        summary = getattr(item, "summary", None)
        item = summary() if callable(summary) else dict(vars(item))
    name = str(item.get("name") or "").strip()
    if not name:
        raise ValueError("A catalog entry has no name.")
    labels = item.get("labels") or []
    structures = [_label_name(lab) for lab in labels]  # segmentation bundles; classifiers list "classes"
    return ModelEntry(name=name, title=str(item.get("title") or name), task=str(item.get("task") or ""),
                      path=str(item.get("path") or ""), structures=[s for s in structures if s],
                      classes=[str(c) for c in item.get("classes") or []],
                      labels=table if table is not None and len(table) else None)


def _label_name(label: Any) -> str:
    if isinstance(label, str):
        return label
    if isinstance(label, dict):
        return str(label.get("name") or "")
    return str(getattr(label, "name", "") or "")


def list_models() -> list[ModelEntry]:
    """Every model the engine's catalog knows (bundled and user-added)."""
    from coralbay.bundle import catalog

    return entries(catalog.list_models())


def entries(items: Iterable[Any]) -> list[ModelEntry]:
    return [entry_from_catalog(item) for item in items]


def add_model(bundle_folder: str) -> ModelEntry:
    """Validate a bundle folder, remember it in the user's catalog, and return its entry.

    (Encoder weights from the Hugging Face Hub are not a bundle: they are given per run, as the
    engine's --backbone, in the module's "Encoder weights" field.)"""
    from coralbay.bundle import catalog

    text = (bundle_folder or "").strip()
    if not text:
        raise ValueError("Choose a model bundle folder.")
    return entry_from_catalog(catalog.add_model(text))


def find(models: Iterable[ModelEntry], name: str) -> ModelEntry | None:
    return next((m for m in models if m.name == name), None)
