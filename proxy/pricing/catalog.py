"""The price catalog: its shapes, and loading and validating ``prices.toml``.

The catalog is ``prices.toml`` shipped in this package, optionally overridden or extended
by a user file of the same format (``Settings.price_catalog``). ``load_catalog`` reads and
validates both once, at start-up, and raises ``ConfigError`` naming the file and key of
anything it cannot use. What it returns, a ``Catalog`` of dated ``ModelPrices`` entries,
is what the cost engine (``cost.price``) reads and the CLI shows (``display``).

How a record finds its entry (docs/pricing.md has the worked reasoning):

- The model name resolves to a catalog entry with or without the ``models/`` prefix, or
  through an explicit alias; anything else is unpriced, never guessed.
- The entry in force is the latest whose ``effective_from`` is on or before the record's
  UTC date.

The name helpers and the bounded ``_warn_once`` below the ``Catalog`` are shared with the
cost engine: both sides must spell models, tools and days alike.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, NoReturn, cast

from ..errors import ConfigError

__all__ = [
    "Catalog",
    "GroundingFee",
    "LongContext",
    "ModelPrices",
    "Rates",
    "load_catalog",
]

log = logging.getLogger("gemini_meter.pricing")

# Grounding fees are quoted per thousand grounded prompts or queries.
_PER_THOUSAND: Final = Decimal(1_000)

_PACKAGE_FILE: Final = "prices.toml"
_MODEL_PREFIX: Final = "models/"

# Tiers an entry must state a factor for; standard is always 1.
TIER_NAMES: Final = ("flex", "batch", "priority")
_STANDARD: Final = "standard"

GroundingUnit = Literal["prompt", "query"]
_GROUNDING_UNITS: Final = ("prompt", "query")

# Unknown model names come from client requests; bound what is kept and logged about them
# so a client inventing names cannot grow this process's memory or flood its log.
_TRACKED_NAMES_LIMIT: Final = 256
# Answers ``Catalog.entry`` keeps: (model, day) pairs, far more than a day's models.
_IN_FORCE_LIMIT: Final = 4096
_NAME_LENGTH_LIMIT: Final = 200
_OTHER_NAMES: Final = "(other)"
_NO_MODEL: Final = "(none)"


# --- the catalog's shapes -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rates:
    """One price tier's rates, USD per 1M tokens.

    ``input_by_modality`` / ``cached_by_modality`` / ``output_by_modality`` hold the
    modalities whose rate differs from the text rate (``input`` / ``cached`` /
    ``output``), e.g. ``{"audio": Decimal("1.00")}``: audio input on Flash models,
    image output on the image models, audio output on the Live models.
    """

    input: Decimal
    output: Decimal
    cached: Decimal
    input_by_modality: Mapping[str, Decimal]
    cached_by_modality: Mapping[str, Decimal]
    output_by_modality: Mapping[str, Decimal]


@dataclass(frozen=True, slots=True)
class LongContext:
    """The rates a whole request bills at when its prompt exceeds ``threshold`` tokens."""

    threshold: int
    rates: Rates


@dataclass(frozen=True, slots=True)
class GroundingFee:
    """A grounding tool's fee: ``per_1000`` USD per 1,000 grounded prompts or queries.

    Gemini 2.5 models bill Google Search grounding per grounded *prompt* (once per request
    that used it, however many searches it ran); Gemini 3 models bill per search *query*.
    """

    unit: GroundingUnit
    per_1000: Decimal

    def charge(self, uses: int) -> Decimal:
        """The fee for a request that reports ``uses`` (> 0) uses of the tool."""
        billed = 1 if self.unit == "prompt" else uses
        return self.per_1000 * billed / _PER_THOUSAND


@dataclass(frozen=True, slots=True)
class ModelPrices:
    """One dated catalog entry: a model's prices from ``effective_from`` on.

    ``source`` is the page the figures come from and ``read_on`` the date the entry was
    checked against it. ``confirmed`` is false when any figure could not be confirmed;
    ``unconfirmed`` then names those figures (dotted field names such as
    ``tiers.priority``) and ``note`` says what they rest on.
    """

    model: str
    effective_from: date
    rates: Rates
    long_context: LongContext | None
    tiers: Mapping[str, Decimal]
    cached_tiers: Mapping[str, Decimal]
    grounding: Mapping[str, GroundingFee]
    cache_storage_per_hour: Decimal | None
    source: str
    read_on: date
    confirmed: bool
    unconfirmed: tuple[str, ...] = ()
    note: str = ""
    # USD per image generated (Imagen) and per second of video generated (Veo)
    per_image: Decimal | None = None
    per_video_second: Decimal | None = None
    # Resolutions ("1080p", "4k") whose second costs other than ``per_video_second``
    # (which is the default resolution's price)
    per_video_second_by_resolution: Mapping[str, Decimal] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def rates_for(self, prompt_tokens: int) -> Rates:
        """The rates a request with a prompt of ``prompt_tokens`` bills at.

        A prompt of exactly the threshold stays in the base tier: Google's page words the
        tiers as "prompts <= 200k tokens" and "prompts > 200k tokens".
        """
        if self.long_context is not None and prompt_tokens > self.long_context.threshold:
            return self.long_context.rates
        return self.rates

    def tier_factor(self, tier: str) -> Decimal:
        """The factor on uncached token charges for a normalised tier name; standard is 1."""
        return self.tiers.get(tier, Decimal(1))

    def cached_tier_factor(self, tier: str) -> Decimal:
        """The factor on cached-token charges for a normalised tier name; standard is 1."""
        return self.cached_tiers.get(tier, Decimal(1))

    def grounding_fee(self, tool: str) -> GroundingFee | None:
        """The fee for a grounding tool, however its name is spelled on the wire."""
        return self.grounding.get(_tool_key(tool))


class Catalog:
    """Every model's dated price entries, the aliases, and the catalog's version.

    Built by ``load_catalog``; immutable apart from the record it keeps of names it could
    not price (``unpriced_models``), which the proxy can export as a metric.
    """

    def __init__(
        self,
        version: str,
        entries: Mapping[str, Iterable[ModelPrices]],
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self._version = version
        self._entries: dict[str, tuple[ModelPrices, ...]] = {
            _model_key(name): tuple(sorted(found, key=lambda e: e.effective_from))
            for name, found in entries.items()
        }
        self._aliases = {_model_key(a): _model_key(t) for a, t in (aliases or {}).items()}
        for alias, target in self._aliases.items():
            if target not in self._entries:
                raise ConfigError(f"price catalog alias {alias!r} points at unknown {target!r}")
            if alias in self._entries:
                raise ConfigError(f"price catalog alias {alias!r} is also a model name")
        self._lock = threading.Lock()
        self._unpriced: dict[str, int] = {}
        # (model as asked, UTC day) -> the entry in force: every record prices through
        # ``entry``, and the answer changes only with the day.
        self._in_force: dict[tuple[str, date], ModelPrices | None] = {}

    def __repr__(self) -> str:
        return f"<Catalog {self._version} models={len(self._entries)}>"

    @property
    def version(self) -> str:
        """Which catalog priced a record: the package version, plus the user file's hash."""
        return self._version

    @property
    def aliases(self) -> Mapping[str, str]:
        return MappingProxyType(self._aliases)

    def resolve(self, model: str | None) -> str | None:
        """The catalog model ``model`` bills as, or None when the catalog has none.

        Accepts the name with or without the ``models/`` prefix, in any letter case, and
        explicit aliases; never matches by prefix or similarity.
        """
        if not model:
            return None
        key = _model_key(model)
        if key in self._entries:
            return key
        return self._aliases.get(key)

    def entries(self, model: str) -> tuple[ModelPrices, ...]:
        """All of a model's dated entries, oldest first (empty when unknown)."""
        name = self.resolve(model)
        return self._entries[name] if name is not None else ()

    def entry(self, model: str, at: datetime | date) -> ModelPrices | None:
        """The entry in force for ``model`` at ``at`` (its UTC date), or None."""
        day = _utc_day(at)
        key = (model, day)
        try:
            return self._in_force[key]
        except KeyError:
            pass
        chosen: ModelPrices | None = None
        for candidate in self.entries(model):
            if candidate.effective_from > day:
                break
            chosen = candidate
        if len(self._in_force) >= _IN_FORCE_LIMIT:
            self._in_force.clear()  # names from the wire, or many days: start again
        self._in_force[key] = chosen
        return chosen

    def models(self) -> list[str]:
        """The catalog's model names (not aliases), sorted."""
        return sorted(self._entries)

    @property
    def unpriced_models(self) -> dict[str, int]:
        """How many records each model name without a price produced, since start-up.

        Names are the raw names records carried (normalised); past a bounded number of
        distinct names the rest are counted under ``(other)``.
        """
        with self._lock:
            return dict(self._unpriced)

    def _note_unpriced(self, model: str | None, reason: str) -> None:
        name = _display_name(model)
        with self._lock:
            if name not in self._unpriced and len(self._unpriced) >= _TRACKED_NAMES_LIMIT:
                name = _OTHER_NAMES
            self._unpriced[name] = self._unpriced.get(name, 0) + 1
        _warn_once(
            f"model:{name}",
            "no price for model %r (%s): its records are stored unpriced (catalog %s)",
            name,
            reason,
            self._version,
        )


# --- names and warnings, shared with the cost engine -----------------------------------------


def _utc_day(at: datetime | date) -> date:
    """The UTC calendar day of ``at``; naive datetimes are taken to be UTC already."""
    if isinstance(at, datetime):
        if at.tzinfo is not None:
            at = at.astimezone(UTC)
        return at.date()
    return at


def _model_key(name: str) -> str:
    key = name.strip().lower()
    return key.removeprefix(_MODEL_PREFIX)


def _tool_key(name: str) -> str:
    """``google_search``, ``googleSearch``, ``GOOGLE_SEARCH`` and ``google-search`` alike."""
    spelled = name.strip().replace("-", "_")
    if not spelled.isupper():
        spelled = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", spelled)
    return spelled.lower()


def _display_name(model: str | None) -> str:
    if not model:
        return _NO_MODEL
    return _model_key(model)[:_NAME_LENGTH_LIMIT]


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, message: str, *args: object) -> None:
    """Log ``message`` at warning level the first time ``key`` is seen in this process."""
    with _warned_lock:
        if key in _warned:
            return
        if len(_warned) >= _TRACKED_NAMES_LIMIT:
            if "(limit)" in _warned:
                return
            _warned.add("(limit)")
            message, args = "further pricing warnings of this kind are not logged", ()
        else:
            _warned.add(key)
    log.warning(message, *args)


# --- loading --------------------------------------------------------------------------------


def load_catalog(user_file: Path | None = None) -> Catalog:
    """The package's catalog, overridden and extended by ``user_file`` if given.

    The user file has the same format. Its entries replace the package's entry of the same
    model and ``effective_from`` and add the others; its aliases add to (and override) the
    package's. The version then names both: ``<package version>+user.<sha256 prefix>``, so
    a record says exactly which catalog priced it. Raises ``ConfigError`` naming the file
    and key of anything unusable.
    """
    package_bytes = resources.files(__package__ or "proxy").joinpath(_PACKAGE_FILE).read_bytes()
    base = _parse(package_bytes, f"{_PACKAGE_FILE} (built in)", version_required=True)
    base_version = base.version or ""  # never empty: _parse requires it of this file
    if user_file is None:
        return Catalog(
            base_version,
            {model: found.values() for model, found in base.entries.items()},
            base.aliases,
        )

    path = Path(user_file)
    try:
        user_bytes = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the price catalog {path}: {exc.strerror or exc}") from exc
    user = _parse(user_bytes, str(path), version_required=False)

    entries = {model: dict(found) for model, found in base.entries.items()}
    for model, found in user.entries.items():
        entries.setdefault(model, {}).update(found)
    aliases = dict(base.aliases)
    for alias in list(aliases):
        # A model the user prices under an alias's name supersedes the package's alias.
        if alias in user.entries:
            del aliases[alias]
    for alias, target in user.aliases.items():
        if alias in entries:
            raise ConfigError(f"price catalog {path}: aliases.{alias!r}: is a model name")
        aliases[alias] = target
    for alias, target in aliases.items():
        if target not in entries:
            origin = str(path) if alias in user.aliases else base.origin
            raise ConfigError(
                f"price catalog {origin}: aliases.{alias!r}: points at {target!r}, "
                "which has no entry"
            )
    digest = hashlib.sha256(user_bytes).hexdigest()[:12]
    return Catalog(
        f"{base_version}+user.{digest}",
        {model: found.values() for model, found in entries.items()},
        aliases,
    )


@dataclass(frozen=True, slots=True)
class _Document:
    origin: str
    version: str | None
    entries: dict[str, dict[date, ModelPrices]]
    aliases: dict[str, str]


_DOCUMENT_KEYS: Final = frozenset({"version", "aliases", "models"})
_ENTRY_KEYS: Final = frozenset(
    {
        "effective_from",
        "source",
        "read_on",
        "confirmed",
        "unconfirmed",
        "note",
        "input",
        "output",
        "cached",
        "input_by_modality",
        "cached_by_modality",
        "output_by_modality",
        "per_image",
        "per_video_second",
        "per_video_second_by_resolution",
        "cache_storage_per_hour",
        "tiers",
        "cached_tiers",
        "long_context",
        "grounding",
    }
)
_NO_TIERS: Final = {"flex": "1", "batch": "1", "priority": "1"}
_MEDIA_KEYS: Final = frozenset({"per_image", "per_video_second", "per_video_second_by_resolution"})
_ENTRY_REQUIRED: Final = (
    "effective_from",
    "source",
    "read_on",
    "confirmed",
    "input",
    "output",
    "cached",
    "tiers",
)
_MODALITY_FIELDS: Final = ("input_by_modality", "cached_by_modality", "output_by_modality")
_RATE_KEYS: Final = frozenset({"input", "output", "cached", *_MODALITY_FIELDS})
_LONG_CONTEXT_KEYS: Final = _RATE_KEYS | {"threshold"}


class _Reader:
    """Reads one parsed TOML document; every error names the file and the key."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, where: str, message: str) -> NoReturn:
        raise ConfigError(f"price catalog {self.origin}: {where}: {message}")

    def table(self, value: object, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"must be a table, got {_kind(value)}")
        return cast(dict[str, Any], value)

    def keys(self, table: Mapping[str, object], allowed: Iterable[str], where: str) -> None:
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            self.fail(where, f"unknown key(s) {', '.join(unknown)}")

    def text(self, value: object, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"must be a non-empty string, got {_kind(value)}")
        return value.strip()

    def rate(self, value: object, where: str) -> Decimal:
        """A non-negative decimal written as a string: floats would round on the way in."""
        if not isinstance(value, str):
            self.fail(
                where,
                f'must be a decimal string such as "1.25", got {_kind(value)} {value!r} '
                "(quote rates, so no binary float stands between the file and Decimal)",
            )
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            self.fail(where, f"{value!r} is not a decimal number")
        if not number.is_finite() or number < 0:
            self.fail(where, f"{value!r} must be a finite number >= 0")
        return number

    def day(self, value: object, where: str) -> date:
        if isinstance(value, datetime):
            self.fail(where, "must be a date (YYYY-MM-DD), not a date-time")
        if isinstance(value, date):
            return value
        if isinstance(value, str):
            try:
                return date.fromisoformat(value.strip())
            except ValueError:
                pass
        self.fail(where, f"must be a date such as 2026-01-31, got {_kind(value)} {value!r}")

    def modality_rates(self, value: object, where: str) -> Mapping[str, Decimal]:
        table = self.table(value, where)
        rates: dict[str, Decimal] = {}
        for modality, rate in table.items():
            key = modality.strip().lower()
            if not key or key in rates:
                self.fail(f"{where}.{modality}", "empty or repeated modality name")
            rates[key] = self.rate(rate, f"{where}.{modality}")
        return MappingProxyType(rates)

    def rates(self, table: Mapping[str, Any], where: str) -> Rates:
        for required in ("input", "output", "cached"):
            if required not in table:
                self.fail(where, f"missing {required}")
        return Rates(
            input=self.rate(table["input"], f"{where}.input"),
            output=self.rate(table["output"], f"{where}.output"),
            cached=self.rate(table["cached"], f"{where}.cached"),
            input_by_modality=self.modality_rates(
                table.get("input_by_modality", {}), f"{where}.input_by_modality"
            ),
            cached_by_modality=self.modality_rates(
                table.get("cached_by_modality", {}), f"{where}.cached_by_modality"
            ),
            output_by_modality=self.modality_rates(
                table.get("output_by_modality", {}), f"{where}.output_by_modality"
            ),
        )

    def long_context(self, value: object, base: Rates, where: str) -> LongContext:
        table = self.table(value, where)
        self.keys(table, _LONG_CONTEXT_KEYS, where)
        threshold = table.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold <= 0:
            self.fail(f"{where}.threshold", f"must be a positive integer, got {threshold!r}")
        rates = self.rates(table, where)
        # A modality the base tier prices apart must be priced apart above the threshold
        # too, or long prompts of that modality would silently bill at the text rate.
        for field_name in _MODALITY_FIELDS:
            missing = set(getattr(base, field_name)) - set(getattr(rates, field_name))
            if missing:
                self.fail(
                    f"{where}.{field_name}",
                    f"must also price {', '.join(sorted(missing))}, as the base tier does",
                )
        return LongContext(threshold=threshold, rates=rates)

    def tiers(
        self, value: object, where: str, *, default: str | None = None
    ) -> Mapping[str, Decimal]:
        """Factors for flex, batch and priority: all required unless there is a default."""
        table = self.table(value, where)
        if _STANDARD in table:
            self.fail(f"{where}.standard", "standard is always 1; leave it out")
        self.keys(table, TIER_NAMES, where)
        missing = [name for name in TIER_NAMES if name not in table]
        if missing and default is None:
            self.fail(where, f"missing factor(s) for {', '.join(missing)}")
        table = {name: table.get(name, default) for name in TIER_NAMES}
        return MappingProxyType(
            {name: self.rate(table[name], f"{where}.{name}") for name in TIER_NAMES}
        )

    def grounding(self, value: object, where: str) -> Mapping[str, GroundingFee]:
        table = self.table(value, where)
        fees: dict[str, GroundingFee] = {}
        for tool, spec in table.items():
            at = f"{where}.{tool}"
            fee = self.table(spec, at)
            self.keys(fee, ("unit", "per_1000"), at)
            unit = fee.get("unit")
            if unit not in _GROUNDING_UNITS:
                self.fail(f"{at}.unit", f'must be "prompt" or "query", got {unit!r}')
            if "per_1000" not in fee:
                self.fail(at, "missing per_1000")
            key = _tool_key(tool)
            if key in fees:
                self.fail(at, "repeated grounding tool")
            fees[key] = GroundingFee(
                unit=cast(GroundingUnit, unit),
                per_1000=self.rate(fee["per_1000"], f"{at}.per_1000"),
            )
        return MappingProxyType(fees)

    def entry(self, model: str, value: object, where: str) -> ModelPrices:
        table = self.table(value, where)
        self.keys(table, _ENTRY_KEYS, where)
        if _MEDIA_KEYS & set(table):
            # A media model (Imagen, Veo) bills by the image or second, not by the token,
            # and no service tier changes that price.
            table = {"input": "0", "output": "0", "cached": "0", "tiers": _NO_TIERS, **table}
        for required in _ENTRY_REQUIRED:
            if required not in table:
                self.fail(where, f"missing {required}")
        confirmed = table["confirmed"]
        if not isinstance(confirmed, bool):
            self.fail(f"{where}.confirmed", f"must be true or false, got {confirmed!r}")
        unconfirmed_raw = table.get("unconfirmed", [])
        if not isinstance(unconfirmed_raw, list):
            self.fail(f"{where}.unconfirmed", "must be a list of field names")
        unconfirmed = tuple(
            self.text(item, f"{where}.unconfirmed[{i}]") for i, item in enumerate(unconfirmed_raw)
        )
        note = table.get("note", "")
        if not isinstance(note, str):
            self.fail(f"{where}.note", f"must be a string, got {_kind(note)}")
        if confirmed and unconfirmed:
            self.fail(where, "confirmed = true contradicts a non-empty unconfirmed list")
        if not confirmed and not note.strip():
            self.fail(where, "confirmed = false needs a note saying what the figures rest on")
        rates = self.rates(table, where)
        long_context = (
            self.long_context(table["long_context"], rates, f"{where}.long_context")
            if "long_context" in table
            else None
        )
        return ModelPrices(
            model=model,
            effective_from=self.day(table["effective_from"], f"{where}.effective_from"),
            rates=rates,
            long_context=long_context,
            tiers=self.tiers(table["tiers"], f"{where}.tiers"),
            cached_tiers=self.tiers(
                table.get("cached_tiers", {}), f"{where}.cached_tiers", default="1"
            ),
            grounding=self.grounding(table.get("grounding", {}), f"{where}.grounding"),
            cache_storage_per_hour=self._optional_rate(table, "cache_storage_per_hour", where),
            source=self.text(table["source"], f"{where}.source"),
            read_on=self.day(table["read_on"], f"{where}.read_on"),
            confirmed=confirmed,
            unconfirmed=unconfirmed,
            note=" ".join(note.split()),
            per_image=self._optional_rate(table, "per_image", where),
            per_video_second=self._optional_rate(table, "per_video_second", where),
            per_video_second_by_resolution=self.by_resolution(table, where),
        )

    def by_resolution(self, table: Mapping[str, Any], where: str) -> Mapping[str, Decimal]:
        key = "per_video_second_by_resolution"
        if key not in table:
            return MappingProxyType({})
        if "per_video_second" not in table:
            # The base rate prices every resolution the table leaves out.
            self.fail(f"{where}.{key}", "needs per_video_second, the default resolution's rate")
        return self.modality_rates(table[key], f"{where}.{key}")

    def _optional_rate(self, table: Mapping[str, Any], key: str, where: str) -> Decimal | None:
        return None if key not in table else self.rate(table[key], f"{where}.{key}")


def _parse(raw: bytes, origin: str, *, version_required: bool) -> _Document:
    reader = _Reader(origin)
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"price catalog {origin}: not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"price catalog {origin}: not valid TOML: {exc}") from exc
    reader.keys(document, _DOCUMENT_KEYS, "top level")

    version: str | None = None
    if "version" in document or version_required:
        version = reader.text(document.get("version"), "version")
        if any(c.isspace() for c in version):
            reader.fail("version", "must not contain spaces")

    entries: dict[str, dict[date, ModelPrices]] = {}
    for name, listed in reader.table(document.get("models", {}), "models").items():
        model = _model_key(name)
        where = f"models.{name!r}"
        if not model:
            reader.fail(where, "empty model name")
        if model in entries:
            reader.fail(where, f"repeats model {model!r}")
        # [[models."x"]] gives a list of entries; a single [models."x"] table is one entry.
        items = listed if isinstance(listed, list) else [listed]
        if not items:
            reader.fail(where, "has no entries")
        dated: dict[date, ModelPrices] = {}
        for i, item in enumerate(items):
            entry = reader.entry(model, item, f"{where}[{i}]")
            if entry.effective_from in dated:
                reader.fail(
                    f"{where}[{i}].effective_from",
                    f"{entry.effective_from} repeats an earlier entry's date",
                )
            dated[entry.effective_from] = entry
        entries[model] = dated

    aliases: dict[str, str] = {}
    for alias, target in reader.table(document.get("aliases", {}), "aliases").items():
        where = f"aliases.{alias!r}"
        key = _model_key(alias)
        if not key or key in aliases:
            reader.fail(where, "empty or repeated alias")
        if key in entries:
            reader.fail(where, "is also a model name in this file")
        aliases[key] = _model_key(reader.text(target, where))
    for alias, target in aliases.items():
        if target in aliases:
            reader.fail(f"aliases.{alias!r}", f"points at another alias {target!r}; name a model")
    return _Document(origin=origin, version=version, entries=entries, aliases=aliases)


def _kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)
