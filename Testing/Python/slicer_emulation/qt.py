"""EMULATES PythonQt's `qt` module for the Qt class the module's Logic uses, QTimer, and (from
qt_widgets.py) the few widgets the Interactive section wires.

The timer never fires by itself (there is no Qt event loop here): tests call `logic.poll()` or
`logic.wait()` (which polls) as Slicer's event loop would on each timeout. Other widgets
(qt.QListWidgetItem, qt.QFileDialog...) are not emulated: the rest of the Widget class runs only in
the in-Slicer self-test.
"""

from qt_widgets import QComboBox, QKeySequence, QLabel, QMessageBox, QPushButton, QShortcut  # noqa: F401


class QTimer:
    def __init__(self, parent=None):
        self.interval = 0
        self._active = False
        self._slots = []

    def setInterval(self, milliseconds: int) -> None:
        self.interval = milliseconds

    def connect(self, signal: str, slot) -> None:
        self._slots.append((signal, slot))

    def start(self, milliseconds: int | None = None) -> None:
        if milliseconds is not None:
            self.interval = milliseconds
        self._active = True

    def stop(self) -> None:
        self._active = False

    def isActive(self) -> bool:
        return self._active
