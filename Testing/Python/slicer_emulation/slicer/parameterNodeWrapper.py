"""EMULATES Base/Python/slicer/parameterNodeWrapper (Slicer 5.4+; part of Slicer's application, not of
slicer-core) for the parameter types the module declares, following Slicer's rules
(wrapper.py, serializers.py, validators.py there):

- Each field is stored in a REAL vtkMRMLScriptedModuleNode: text via SetParameter, nodes as a node
  reference (plus an empty parameter of the same name); a Union member at index i as `<name>_<i>`.
- On wrapping a parameter node, every field not yet in it is written with its default: the class
  attribute, else the type's default: "" for str, 0 for numbers, False for bool, Path() for paths,
  None for nodes. A Union's default is None only for Optional[X] (exactly X and None); otherwise it
  is its first member's default.
- Writing validates first: str/number/bool/Path refuse None and other types (NotNone, IsInstance);
  a node field accepts None or an instance of its class; `Annotated` validators (WithinRange,
  Choice, Minimum, Maximum) raise ValueError. A Union writes through the first member that takes the
  value's type and validates it, and raises TypeError("Unable to write value ...") if none does:
  so `Union[NodeA, NodeB]` cannot hold its own default None (Slicer: "Unable to write value 'None'").
- GUI binding (connectGui/disconnectGui) is Qt and is not emulated.
"""

from __future__ import annotations

import pathlib
import typing

import slicer

__all__ = ["parameterNodeWrapper", "Choice", "WithinRange", "Minimum", "Maximum"]


# -- validators (same names and checks as Slicer's validators.py) ------------------------------------

class Validator:
    def validate(self, value) -> None:
        raise NotImplementedError


class WithinRange(Validator):
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class Minimum(Validator):
    def __init__(self, minimum):
        self.minimum = minimum

    def validate(self, value) -> None:
        if value < self.minimum:
            raise ValueError(f"Value must be greater than {self.minimum}, is {value}")


class Maximum(Validator):
    def __init__(self, maximum):
        self.maximum = maximum

    def validate(self, value) -> None:
        if value > self.maximum:
            raise ValueError(f"Value must be less than {self.maximum}, is {value}")


class Choice(Validator):
    def __init__(self, choices):
        self.choices = choices

    def validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


class _NotNone(Validator):
    def validate(self, value) -> None:
        if value is None:
            raise ValueError("Value must not be None")


class _IsInstance(Validator):
    def __init__(self, classtype):
        self.classtype = classtype

    def validate(self, value) -> None:
        if value is not None and not isinstance(value, self.classtype):
            raise TypeError(f"Value must be of type '{self.classtype}', is type '{type(value)}' value '{value}'")


class _IsNone(Validator):
    def validate(self, value) -> None:
        if value is not None:
            raise ValueError("Value must be None")


# -- serializers ----------------------------------------------------------------------------------------

_PATH_TYPES = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath,
               pathlib.PurePosixPath, pathlib.PureWindowsPath)


class _Serializer:
    """One parameter type: how it is stored, its default, and what it accepts (validators)."""

    def __init__(self, kind, type_, validators, members=()):
        self.kind, self.type, self.validators, self.members = kind, type_, list(validators), list(members)

    def takes(self, valueType) -> bool:
        if self.kind == "node":
            return isinstance(valueType, type) and issubclass(valueType, slicer.vtkMRMLNode)
        if self.kind == "none":
            return valueType is type(None)
        if self.kind == "number":
            return valueType in (int, float)
        return valueType == self.type

    def default(self):
        if self.kind == "union":
            if len(self.members) == 2 and self.members[1].kind == "none":
                return None
            return self.members[0].default()
        return {"str": "", "number": 0, "bool": False, "node": None, "none": None}.get(self.kind, None) \
            if self.kind != "path" else self.type()

    def validate(self, value) -> None:
        for validator in self.validators:
            validator.validate(value)

    def isIn(self, node, name) -> bool:
        if self.kind == "union":
            return any(m.isIn(node, f"{name}_{i}") for i, m in enumerate(self.members))
        return node.HasParameter(name)

    def write(self, node, name, value) -> None:
        self.validate(value)
        if self.kind == "union":
            index = self._member(value)
            for i, member in enumerate(self.members):
                member.remove(node, f"{name}_{i}")
            self.members[index].write(node, f"{name}_{index}", value)
        elif self.kind == "node":
            node.SetParameter(name, "")
            node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        elif self.kind == "bool":
            node.SetParameter(name, "True" if value else "False")
        elif self.kind == "none":
            node.SetParameter(name, "True")
        else:
            node.SetParameter(name, str(value))

    def _member(self, value) -> int:
        error = None
        for index, member in enumerate(self.members):
            if member.takes(type(value)):
                try:
                    member.validate(value)
                    return index
                except Exception as exc:  # noqa: BLE001 - try the next member, as Slicer does
                    error = exc
        if error is not None:
            raise error
        raise TypeError(f"Unable to write value '{value}' of type '{type(value)}'")

    def read(self, node, name):
        if self.kind == "union":
            for i, member in enumerate(self.members):
                if member.isIn(node, f"{name}_{i}"):
                    return member.read(node, f"{name}_{i}")
            raise KeyError(f"Unable to find value for name: {name}")
        if self.kind == "node":
            return node.GetNodeReference(name)
        if self.kind == "none":
            return None
        text = node.GetParameter(name)
        if self.kind == "bool":
            return text == "True"
        return self.type(text) if self.kind in ("number", "path") else text

    def remove(self, node, name) -> None:
        if self.kind == "union":
            for i, member in enumerate(self.members):
                member.remove(node, f"{name}_{i}")
            return
        node.UnsetParameter(name)
        if self.kind == "node":
            node.RemoveNodeReferenceIDs(name)


def _serializer(annotation) -> _Serializer:
    validators = []
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extras = typing.get_args(annotation)
        validators = [v for v in extras if isinstance(v, Validator)]
    if typing.get_origin(annotation) is typing.Union:
        members = [_serializer(arg) for arg in typing.get_args(annotation)]
        return _Serializer("union", annotation, validators, members)
    if annotation is type(None):
        return _Serializer("none", annotation, [_IsNone(), *validators])
    if isinstance(annotation, type) and issubclass(annotation, slicer.vtkMRMLNode):
        return _Serializer("node", annotation, [_IsInstance(annotation), *validators])
    for kind, types in (("str", (str,)), ("number", (int, float)), ("bool", (bool,)), ("path", _PATH_TYPES)):
        if annotation in types:
            accepted = (int, float) if annotation is float else annotation
            return _Serializer(kind, annotation, [_NotNone(), _IsInstance(accepted), *validators])
    raise TypeError(f"Unable to create serializer for type: {annotation}")


# -- the decorator -------------------------------------------------------------------------------------

def parameterNodeWrapper(classtype):
    hints = typing.get_type_hints(classtype, include_extras=True)
    parameters = {}
    for name, annotation in hints.items():
        serializer = _serializer(annotation)
        default = getattr(classtype, name) if hasattr(classtype, name) else serializer.default()
        parameters[name] = (serializer, default)
        setattr(classtype, name, property(
            lambda self, n=name: parameters[n][0].read(self.parameterNode, n),
            lambda self, value, n=name: parameters[n][0].write(self.parameterNode, n, value)))

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        for name, (serializer, default) in parameters.items():
            if not serializer.isIn(parameterNode, name):
                serializer.write(parameterNode, name, default)

    classtype.__init__ = __init__
    classtype.allParameters = parameters
    classtype.default = lambda self, name: parameters[name][1]
    classtype.AddObserver = lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback, priority)
    classtype.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
    return classtype
