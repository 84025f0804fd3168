"""A TypeDecorator as the logical type: its own conversions around its impl's codec.

sqlalchemy-utils' ``PhoneNumberType`` or ``ColorType``, or an application's own
``TypeDecorator``, turns its Python value into a value of its ``impl`` (a str, an
int...) in ``process_bind_param`` and back in ``process_result_value``. An
encrypted column does the same, then encodes the impl's value with the impl's
codec: what is encrypted is exactly what a plaintext column of the decorator
would have stored.

The decorator is called with a neutral dialect, never the database's: the value
never reaches a column of the decorator's database-specific type (JSON on
PostgreSQL, say), only its declared ``impl``, so the decorator takes the path it
takes where that impl is all there is. The encrypted bytes then do not depend on
the database, as every codec's do not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.sql.type_api import TypeDecorator, TypeEngine

from .codecs import Codec, is_supported, supported_types
from .errors import ConfigurationError, DecryptionError, InvalidValueError

__all__ = ["Decorators", "undecorate"]

# What a decorator sees as the dialect: one whose column holds its declared impl.
_NEUTRAL = DefaultDialect()

Convert = Callable[[Any], Any]


def undecorate(logical: TypeEngine[Any]) -> tuple[TypeEngine[Any], Decorators]:
    """The supported type under ``logical``'s TypeDecorators, and those decorators.

    Raises ConfigurationError naming the types when what lies under the
    decorators is not a supported logical type, or when a decorator converts
    values in ``bind_processor``/``result_processor`` (as PickleType does): those
    hand back the database driver's own form of a value, not a value of the impl.
    """
    chain: list[TypeDecorator[Any]] = []
    type_ = logical
    while not is_supported(type_) and isinstance(type_, TypeDecorator):
        _refuse_driver_processing(type_)
        chain.append(type_)
        type_ = type_.impl_instance
    if not is_supported(type_):
        under = f" (a TypeDecorator over {type(type_).__name__})" if chain else ""
        raise ConfigurationError(
            f"EncryptedType cannot hold {type(logical).__name__}{under}; supported logical "
            f"types: {', '.join(supported_types())}, and TypeDecorators over them"
        )
    return type_, Decorators(tuple(chain))


def _refuse_driver_processing(decorator: TypeDecorator[Any]) -> None:
    cls = type(decorator)
    for hook in ("bind_processor", "result_processor"):
        if getattr(cls, hook) is not getattr(TypeDecorator, hook):
            raise ConfigurationError(
                f"EncryptedType cannot hold {cls.__name__}: it converts values in "
                f"{hook}(), whose result is the database driver's, not a value of its "
                "impl; define process_bind_param and process_result_value instead"
            )


def _overrides(decorator: TypeDecorator[Any], hook: str) -> bool:
    return getattr(type(decorator), hook) is not getattr(TypeDecorator, hook)


class Decorators:
    """The TypeDecorators of a logical type, outermost first, and their conversions.

    Like SQLAlchemy, it calls only the hooks a decorator overrides, and calls them
    for None too (a decorator may store NULL for an empty value, or read it as one).
    A decorator's exception becomes InvalidValueError (writing) or DecryptionError
    (reading), naming the decorator and the exception's class: its message could
    quote the value.
    """

    def __init__(self, chain: tuple[TypeDecorator[Any], ...]) -> None:
        self.chain = chain
        self._binds = [d for d in chain if _overrides(d, "process_bind_param")]
        self._results = [d for d in reversed(chain) if _overrides(d, "process_result_value")]

    def __bool__(self) -> bool:
        return bool(self.chain)

    @property
    def cache_key(self) -> tuple[Any, ...] | None:
        """The decorators' own cache keys; None when one of them cannot be cached."""
        keys = tuple(d._static_cache_key for d in self.chain)
        if any(not isinstance(key, tuple) for key in keys):  # NO_CACHE: cache_ok unset
            return None
        return keys

    def before(self, process: Convert, label: str = "") -> Convert:
        """``process`` (a bind processor, or an encode) after the decorators' conversions.

        Outermost decorator first, from the application's value to the impl's.
        ``label`` (the column) starts the message of the InvalidValueError raised
        for a decorator's failure.
        """
        bind = _converter(self._binds, "process_bind_param", _unwritable(label))
        if bind is None:
            return process
        return lambda value: process(bind(value))

    def after(self, process: Convert, label: str = "") -> Convert:
        """``process`` (a result processor, or a decode), then the decorators' conversions.

        Innermost decorator first; a decorator's failure raises DecryptionError.
        """
        result = _converter(self._results, "process_result_value", _unreadable(label))
        if result is None:
            return process
        return lambda value: result(process(value))

    def around(self, codec: Codec) -> Codec:
        """``codec`` with the decorators' conversions: encodes and decodes application values."""
        return codec._replace(encode=self.before(codec.encode), decode=self.after(codec.decode))


Failure = Callable[[str, Exception], Exception]


def _unwritable(label: str) -> Failure:
    prefix = f"{label}: " if label else ""
    return lambda name, failure: InvalidValueError(
        f"{prefix}{name} could not convert this value: {type(failure).__name__}"
    )


def _unreadable(label: str) -> Failure:
    prefix = f"{label}: " if label else ""
    return lambda name, failure: DecryptionError(
        f"{prefix}decrypted value is not a valid {name} value: {type(failure).__name__}"
    )


def _converter(decorators: list[TypeDecorator[Any]], hook: str, error: Failure) -> Convert | None:
    """One function applying each decorator's ``hook`` in turn, or None when there is none."""
    if not decorators:
        return None
    steps = [(getattr(d, hook), type(d).__name__) for d in decorators]

    def convert(value: Any) -> Any:
        for step, name in steps:
            try:
                value = step(value, _NEUTRAL)
            except Exception as exc:  # re-raised below, holding nothing of the value
                failure, failed = exc, name
                break
        else:
            return value
        raise error(failed, failure)  # outside the except: no __context__ to quote the value

    return convert
