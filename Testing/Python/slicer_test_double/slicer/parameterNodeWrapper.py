"""Test double of `slicer.parameterNodeWrapper` (NOT Slicer).

`parameterNodeWrapper` makes the class a holder of typed values with the declared defaults (None
for nodes); `connectGui`/`disconnectGui` only record the call. The real wrapper (Slicer 5.4+)
stores the values in the MRML parameter node, which the in-Slicer self-test exercises.
"""

import typing


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


def parameterNodeWrapper(cls):
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {name: getattr(cls, name, None) for name in hints}

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        self.gui_connections = 0
        for name, value in defaults.items():
            setattr(self, name, value)

    def connectGui(self, gui):
        self.gui_connections += 1
        return object()

    def disconnectGui(self, tag):
        self.gui_connections -= 1

    return type(cls.__name__, (), {"__init__": __init__, "connectGui": connectGui,
                                   "disconnectGui": disconnectGui, "__annotations__": hints,
                                   "__doc__": cls.__doc__})
