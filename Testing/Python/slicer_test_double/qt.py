"""Test double of Qt's `qt` module (NOT Qt): only `QTimer`, which never fires by itself.

The module's logic polls the engine from a QTimer; tests call `logic.poll()` / `logic.wait()`.
"""


class QTimer:
    def __init__(self):
        self.interval = 0
        self.active = False
        self.slots = []

    def setInterval(self, milliseconds):
        self.interval = milliseconds

    def connect(self, signal, slot):
        self.slots.append((signal, slot))

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active
