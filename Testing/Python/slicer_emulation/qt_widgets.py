"""EMULATES the few PythonQt widgets the panel's sections wire (QPushButton, QComboBox, QLabel,
QLineEdit, QCheckBox, QShortcut, QKeySequence, QMessageBox's constants) so that the Interactive
section's Qt wiring runs on real slicer-core logic (test_slicer_interactive_section.py).

What is emulated is only Qt's signal/slot plumbing as PythonQt exposes it: `connect(signature,
slot)`, properties read and set as attributes (`button.enabled`, `label.text`, `combo.currentText`),
`blockSignals`, and a way for the test to do what the user does (`click()`, `activate(index)`, a
key pressed on the window that owns shortcuts). No drawing, no focus, no event loop.
"""

from __future__ import annotations


class Widget:
    def __init__(self, name: str = "", parent=None) -> None:
        self.objectName = name
        self.parent = parent
        self.enabled = True
        self.text = ""
        self.toolTip = ""
        self._slots: dict[str, list] = {}
        self._blocked = False

    def connect(self, signal: str, slot) -> None:
        self._slots.setdefault(signal, []).append(slot)

    def disconnect(self, signal: str) -> None:
        self._slots.pop(signal, None)

    def emit(self, signal: str, *args) -> None:
        if not self._blocked:
            for slot in list(self._slots.get(signal, [])):
                slot(*args)

    def blockSignals(self, block: bool) -> bool:
        was, self._blocked = self._blocked, bool(block)
        return was

    def setParent(self, parent) -> None:
        self.parent = parent


class QPushButton(Widget):
    def click(self) -> None:
        """What a mouse click does: nothing when disabled, else clicked(bool)."""
        if self.enabled:
            self.emit("clicked(bool)", False)


class QLabel(Widget):
    pass


class QLineEdit(Widget):
    pass


class QCheckBox(Widget):
    checked = False


class QComboBox(Widget):
    def __init__(self, name: str = "", parent=None) -> None:
        super().__init__(name, parent)
        self._items: list[tuple[str, object]] = []
        self.currentIndex = -1

    @property
    def count(self) -> int:
        return len(self._items)

    @property
    def currentText(self) -> str:
        return self._items[self.currentIndex][0] if 0 <= self.currentIndex < self.count else ""

    def addItem(self, text: str, data=None) -> None:
        self._items.append((str(text), data))
        if self.currentIndex < 0:
            self.setCurrentIndex(0)

    def addItems(self, texts) -> None:
        for text in texts:
            self.addItem(text)

    def clear(self) -> None:
        self._items = []
        self.setCurrentIndex(-1)

    def itemText(self, index: int) -> str:
        return self._items[index][0]

    def itemData(self, index: int):
        return self._items[index][1]

    def findData(self, data) -> int:
        return next((i for i, (_text, d) in enumerate(self._items) if d == data), -1)

    def setCurrentIndex(self, index: int) -> None:
        if index != self.currentIndex:
            self.currentIndex = index
            self.emit("currentIndexChanged(int)", index)

    def activate(self, index: int) -> None:
        """The user picks item `index` (Qt emits activated(int) only for user choices)."""
        self.setCurrentIndex(index)
        self.emit("activated(int)", index)


class QKeySequence:
    def __init__(self, text: str) -> None:
        self._text = text

    def toString(self) -> str:
        return self._text


class QShortcut(Widget):
    """A shortcut on `parent` (a window): fires activated() when its key is pressed there, until
    its parent is set to None (Qt deletes it with its parent)."""

    def __init__(self, keySequence: QKeySequence, parent=None) -> None:
        super().__init__("", parent)
        self.key = keySequence.toString()
        if parent is not None:
            parent.shortcuts.append(self)

    def setParent(self, parent) -> None:
        if self.parent is not None and self in self.parent.shortcuts:
            self.parent.shortcuts.remove(self)
        self.parent = parent


class Window(Widget):
    """A top-level window (Slicer's main window) that owns shortcuts; `press(key)` is the user's key."""

    def __init__(self, name: str = "qSlicerMainWindow") -> None:
        super().__init__(name)
        self.shortcuts: list[QShortcut] = []

    def press(self, key: str) -> int:
        """Press `key` (e.g. "Ctrl+Z"); returns how many shortcuts fired."""
        fired = [s for s in self.shortcuts if s.key == key and s.enabled]
        for shortcut in fired:
            shortcut.emit("activated()")
        return len(fired)


class QMessageBox:
    """Only the constants slicer.util's message boxes read (in testing mode they only log)."""

    Ok, Cancel, Critical, Warning, Information, Question = 0x400, 0x400000, 3, 2, 1, 4
