"""Add a member to a closed `str` Enum at run time (PEFT's PeftType), on Python 3.10 through 3.13.

Pure standard library on purpose: a test runs this file under every Python it can find.
"""

from __future__ import annotations

import enum


def extend_str_enum(enum_cls: type[enum.Enum], name: str, value: str | None = None) -> enum.Enum:
    """Return `enum_cls[name]`, creating it first if needed. Idempotent."""
    value = name if value is None else value
    if name in enum_cls.__members__:
        return enum_cls[name]
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    member.__init__(value)
    if hasattr(enum_cls, "_add_member_"):  # Python 3.13+: sets the class attribute and the name map
        enum_cls._add_member_(name, member)
    else:
        enum_cls._member_map_[name] = member
        # bypass EnumMeta.__setattr__, which refuses to touch member names
        type.__setattr__(enum_cls, name, member)
    enum_cls._member_names_.append(name)  # what iteration and len() walk, on every version
    enum_cls._value2member_map_[value] = member
    if hasattr(enum_cls, "_sort_order_"):
        member._sort_order_ = len(enum_cls._member_names_) - 1
    return member
