"""The panel's Engine section: Local or Remote (server address, token, CA file or fingerprint) and
*Test connection*.

Why apart from the widget: the choice is applied to the Logic (`useRemoteEngine`/`useLocalEngine`)
whenever a field changes, and the status line says in one sentence what runs where or why the
server cannot be used. The token is read from its (password) field into memory only: it is not in
the parameter node, the scene or Slicer's settings, so it is typed again after a restart.
"""

from __future__ import annotations

from slicer.i18n import tr as _
from CoralBaySlicerLib.remote_client import RemoteError

LOCAL_SENTENCE = "The engine runs on this computer."


class EngineSection:
    """Given the panel's `ui`, the logic and `changed()`, called when the engine changed (the model
    list then comes from the other engine)."""

    def __init__(self, ui, logic, changed) -> None:
        self.ui, self.logic, self.changed = ui, logic, changed
        ui.engineComboBox.connect("currentIndexChanged(int)", lambda index: self.apply())
        for field in (ui.remoteUrlLineEdit, ui.remoteTokenLineEdit, ui.remoteCaFileLineEdit,
                      ui.remoteFingerprintLineEdit):
            field.connect("editingFinished()", self.apply)
        ui.testConnectionButton.connect("clicked(bool)", lambda checked=False: self.onTestConnection())

    def _settings(self) -> tuple[str, str, str, str]:
        ui = self.ui
        return (ui.remoteUrlLineEdit.text.strip(), ui.remoteTokenLineEdit.text.strip(),
                ui.remoteCaFileLineEdit.text.strip(), ui.remoteFingerprintLineEdit.text.strip())

    def apply(self) -> None:
        """Make the Logic use the chosen engine; an unusable remote setting leaves the local one."""
        before = self.logic.remoteEngine()
        if self.ui.engineComboBox.currentText != "Remote":
            self.logic.useLocalEngine()
            self.ui.engineStatusLabel.text = _(LOCAL_SENTENCE)
        else:
            try:
                self.ui.engineStatusLabel.text = self.logic.useRemoteEngine(*self._settings())
            except RemoteError as exc:
                self.logic.useLocalEngine()
                self.ui.engineStatusLabel.text = _("Not connected, the engine runs on this computer: {error}").format(
                    error=exc)
        if before is not None or self.logic.remoteEngine() is not None:
            self.changed()

    def onTestConnection(self) -> None:
        try:
            self.ui.engineStatusLabel.text = self.logic.testConnection(*self._settings())
        except RemoteError as exc:
            self.ui.engineStatusLabel.text = str(exc)
