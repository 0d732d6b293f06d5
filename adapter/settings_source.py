"""Reading settings with pydantic-settings: a YAML mapping plus ``PREFIX_SECTION__KEY`` overrides,
validated against frozen dataclasses, every failure turned into one :class:`ConfigError` line.

The settings types themselves live in :mod:`adapter.config` (plain frozen dataclasses, so the
rest of the code can ``dataclasses.replace`` them); this module knows nothing of their fields.
It builds one ``BaseSettings`` model from the root dataclass's fields, so a new section or key
needs no change here.

pydantic-settings reads only the variables that match a field: a mistyped ``RTPLAN_*`` variable
would be ignored silently. :func:`refuse_unknown_variables` checks every prefixed variable
against the fields first, so a typo is refused (a documented contract).

Errors never quote the rejected value: a value may be a secret, or a path naming a patient.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Collection, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from adapter.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler, ValidationError
    from pydantic_core import CoreSchema, ErrorDetails
    from pydantic_settings import BaseSettings

NESTED_DELIMITER: Final = "__"

T = TypeVar("T")

# The environment one load reads (tests pass their own mapping instead of os.environ).
_ENVIRON: ContextVar[Mapping[str, str]] = ContextVar(
    "rtplan_settings_environ", default=MappingProxyType({})
)


# pydantic and pydantic-settings are imported when a model is first needed, not with this
# module: a command run with the defaults (no file, no RTPLAN_* override) never loads them,
# which saves a quarter of a second or more of start-up (docs/ingest.md "Start-up"). The three
# field markers below are therefore pydantic's documented ``__get_pydantic_core_schema__``
# hook rather than pydantic (or annotated_types) classes, so that the settings dataclasses can
# carry them without importing pydantic.


@dataclasses.dataclass(frozen=True, slots=True)
class Interval:
    """A number setting's inclusive bounds, applied as ``annotated_types.Interval(ge, le)``
    would be (the same constraints, the same ``greater_than_equal`` / ``less_than_equal``
    errors), without importing annotated_types and typing_extensions at start-up."""

    ge: int | float
    le: int | float

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        schema = handler(source)
        if schema["type"] not in ("int", "float"):
            raise TypeError(f"Interval bounds a number, not {source!r}")
        bounded: dict[str, Any] = {**schema, "ge": self.ge, "le": self.le}
        return typing.cast("CoreSchema", bounded)


@dataclasses.dataclass(frozen=True, slots=True)
class _Finite:
    """Float metadata: NaN and infinity are refused (pydantic's ``AllowInfNan(False)``)."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        from pydantic import AllowInfNan

        return handler.generate_schema(typing.Annotated[source, AllowInfNan(False)])


def _comma_separated(value: object) -> object:
    """An environment value for a list is comma-separated (``CTSIM1,PACS``), or the JSON list
    other pydantic-settings programs take (``["CTSIM1","PACS"]``): read as one comma-free
    item, that form would name an AE title no caller has."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            items = json.loads(value)  # a JSONDecodeError is a ValueError: refused, named
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError("a JSON list must hold strings")
            return tuple(item.strip() for item in items if item.strip())
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list | tuple):
        return tuple(item.strip() if isinstance(item, str) else item for item in value)
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class _Before:
    """pydantic's ``BeforeValidator(function)``: ``function`` runs on the raw value first."""

    function: Callable[[object], object]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        from pydantic_core import core_schema

        return core_schema.no_info_before_validator_function(self.function, handler(source))


FINITE: Final = _Finite()
"""Float metadata: NaN and infinity are refused."""

TextList = typing.Annotated[tuple[str, ...], _Before(_comma_separated)]
"""A list of text: a YAML list, or comma-separated in an environment variable."""


def _settings_model(name: str, prefix: str, fields: Mapping[str, Any]) -> type[BaseSettings]:
    """One pydantic-settings model with ``fields``: environment first, then the file."""
    from pydantic import create_model
    from pydantic_settings import (
        BaseSettings,
        EnvSettingsSource,
        PydanticBaseSettingsSource,
        SettingsConfigDict,
    )
    from pydantic_settings.sources.utils import parse_env_vars

    class MappingEnvSource(EnvSettingsSource):
        """pydantic-settings' environment source, reading the mapping this load was given."""

        def _load_env_vars(self) -> Mapping[str, str | None]:
            return parse_env_vars(
                _ENVIRON.get(), self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
            )

    class SettingsBase(BaseSettings):
        """Environment first, then the file: an override wins over the file's value."""

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # No .env file and no secrets directory: one file, one environment, nothing implicit.
            return (MappingEnvSource(settings_cls), init_settings)

    config = SettingsConfigDict(
        env_prefix=prefix,
        env_nested_delimiter=NESTED_DELIMITER,
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )
    base = type(f"{name}Base", (SettingsBase,), {"model_config": config})
    model: type[BaseSettings] = create_model(f"{name}Sources", __base__=base, **fields)
    return model


class SettingsReader(Generic[T]):
    """Loads and validates one root dataclass of sections (each a dataclass) and plain fields."""

    def __init__(self, root: type[T], prefix: str) -> None:
        if not dataclasses.is_dataclass(root):
            raise TypeError(f"{root!r} is not a dataclass")
        self.root = root
        self.prefix = prefix
        self.hints = typing.get_type_hints(root, include_extras=True)
        self.fields = {f.name: f for f in dataclasses.fields(root)}
        self.sections: dict[str, type[Any]] = {
            name: hint
            for name, hint in self.hints.items()
            if isinstance(hint, type) and dataclasses.is_dataclass(hint)
        }
        self.keys = {
            name: frozenset(f.name for f in dataclasses.fields(cls))
            for name, cls in self.sections.items()
        }
        self._model: type[BaseSettings] | None = None

    @property
    def model(self) -> type[BaseSettings]:
        """The pydantic-settings model of the root's fields, built on first use: adding a
        section or a key to the dataclasses is all it takes to read, override and validate it."""
        if self._model is None:
            for cls in self.sections.values():
                # Every section refuses a key it does not have (a typo in the file is an error).
                cls.__pydantic_config__ = {"extra": "forbid"}
            fields: dict[str, Any] = {
                name: (self.hints[name], _default(f)) for name, f in self.fields.items()
            }
            self._model = _settings_model(self.root.__name__, self.prefix, fields)
        return self._model

    def refuse_unknown_variables(self, env: Mapping[str, str], secrets: Collection[str]) -> None:
        """Every ``PREFIX*`` variable but the named secrets must name a setting.

        Raises:
            ConfigError: naming the first unknown variable.
        """
        for name in sorted(env):
            if not name.upper().startswith(self.prefix) or name in secrets:
                continue
            key = name[len(self.prefix) :].lower()
            section, sep, field_name = key.partition(NESTED_DELIMITER)
            known = (
                field_name in self.keys.get(section, ())
                if sep
                else key in self.fields and key not in self.sections
            )
            if not known:
                raise ConfigError(name, "unknown environment override")

    def overridden(self, env: Mapping[str, str], secrets: Collection[str]) -> bool:
        """Whether any ``PREFIX*`` variable but the named secrets is set (an override)."""
        return any(
            name.upper().startswith(self.prefix) and name not in secrets for name in env
        )

    def load(self, values: Mapping[str, Any], env: Mapping[str, str]) -> T:
        """File ``values`` overridden by ``env``, validated into the root dataclass.

        Raises:
            ConfigError: naming the first key that is unknown, of the wrong type or out of range.
        """
        loaded = self._validate(values, env)
        return self.root(**{name: getattr(loaded, name) for name in self.fields})

    def _validate(self, values: Mapping[str, Any], env: Mapping[str, str]) -> BaseSettings:
        from pydantic import ValidationError

        model = self.model
        token = _ENVIRON.set(env)
        try:
            return model(**values)
        except ValidationError as exc:
            raise self.config_error(exc) from None
        finally:
            _ENVIRON.reset(token)

    def revalidate(self, settings: T) -> None:
        """Check the types and ranges of settings built or changed in code.

        Raises:
            ConfigError: naming the first key out of range.
        """
        self._validate(dataclasses.asdict(settings), {})  # type: ignore[call-overload]

    def config_error(self, exc: ValidationError) -> ConfigError:
        error = exc.errors(include_url=False, include_input=False)[0]
        key = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
        return ConfigError(key, self._problem(key, error))

    def _problem(self, key: str, error: ErrorDetails) -> str:
        kind = error["type"]
        if kind in _RANGE_ERRORS:
            found = self._interval(key)
            return _range_problem(found) if found else error["msg"]
        if kind == "literal_error":
            expected = str((error.get("ctx") or {}).get("expected", ""))
            return "must be one of " + expected.replace("'", "").replace(" or ", ", ")
        return _PROBLEMS.get(kind, error["msg"])

    def _interval(self, key: str) -> tuple[Interval, bool] | None:
        """The field's bounds (``Interval``) and whether it is a float, if it has bounds."""
        section, _, name = key.partition(".")
        if section not in self.sections:
            return None
        hint = typing.get_type_hints(self.sections[section], include_extras=True).get(name)
        bounds = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Interval)]
        if not bounds:
            return None
        return bounds[0], getattr(hint, "__origin__", None) is float


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        from pydantic import Field

        return Field(default_factory=f.default_factory)
    return f.default


def _number(value: Any) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _range_problem(found: tuple[Interval, bool]) -> str:
    interval, is_float = found
    low, high = interval.ge, interval.le
    if is_float:
        return f"must be a finite number from {_number(low)} to {_number(high)} seconds"
    return f"must be a whole number from {low} to {high}"


_RANGE_ERRORS = frozenset(
    {"greater_than_equal", "less_than_equal", "greater_than", "less_than", "finite_number"}
)
_PROBLEMS: Mapping[str, str] = {
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text",
    "tuple_type": "must be a list of text",
    "path_type": "must be a path",
    "extra_forbidden": "unknown setting",
    "unexpected_keyword_argument": "unknown setting",
    "dataclass_type": "must be a mapping",
    "dataclass_args_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
}
