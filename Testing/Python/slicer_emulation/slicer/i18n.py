"""EMULATES Base/Python/slicer/i18n.py (Slicer's application, not in slicer-core): `tr` translates
with Qt's translator there; here the text comes back untranslated, as in an English Slicer."""


def tr(text: str) -> str:
    return text
