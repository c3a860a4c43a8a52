"""The price catalog (``proxy.pricing.catalog``): the shipped file, names, dates, user files.

Figures that check which entry is in force are worked by hand from the rates in the
shipped ``prices.toml`` or the user file written by the test, with the arithmetic in a
comment.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from proxy.errors import ConfigError
from proxy.metering.records import UNPRICED
from proxy.pricing import Catalog, ModelPrices, load_catalog, price
from tests.factories import AT, CATALOG, D, assert_cost, usage


def test_the_seed_catalog():
    assert CATALOG.version == "2026-11-29.2"
    # (the media models are test_the_media_entries')
    assert [m for m in CATALOG.models() if not m.startswith(("imagen-", "veo-"))] == [
        "gemini-2.5-flash",
        "gemini-2.5-flash-image",
        "gemini-2.5-flash-lite",
        "gemini-2.5-flash-native-audio-preview-09-2025",
        "gemini-2.5-flash-preview-tts",
        "gemini-2.5-pro",
        "gemini-2.5-pro-preview-tts",
        "gemini-3-flash-preview",
        "gemini-3-pro-image-preview",
        "gemini-3-pro-preview",
        "gemini-3.1-flash-lite",
        "gemini-3.1-flash-tts-preview",
        "gemini-3.1-pro-preview",
        "gemini-3.5-flash",
        "gemini-3.5-flash-lite",
        "gemini-3.6-flash",
        "gemini-3.8-flash",
        "gemini-embedding-001",
        "gemini-embedding-2",
        "gemini-live-2.5-flash-preview",
    ]
    # the cached-token factors settled on 2026-11-29 (docs/pricing.md): text models with a
    # priority tier bill cached tokens at half under flex, in full under batch and at 1.8x
    # under priority; models without those tiers (speech, image, Live, embeddings) at 1
    settled = {"flex": D("0.5"), "batch": D("1"), "priority": D("1.8")}
    for model in CATALOG.models():
        for entry in CATALOG.entries(model):
            assert entry.source.startswith("https://ai.google.dev/gemini-api/docs/pricing")
            assert entry.read_on >= entry.effective_from or entry.effective_from.year == 2027
            # an unconfirmed figure is always named and explained
            assert entry.confirmed or (entry.unconfirmed and entry.note)
            assert set(entry.tiers) == {"flex", "batch", "priority"}
            if entry.tiers["priority"] == D("1.8"):
                assert dict(entry.cached_tiers) == settled, model
            else:
                assert all(f == 1 for f in entry.cached_tiers.values()), model
    pro = CATALOG.entry("gemini-2.5-pro", AT)
    assert pro is not None and pro.long_context is not None
    assert pro.long_context.threshold == 200_000
    assert CATALOG.entry("gemini-3.5-flash", AT).long_context is None  # type: ignore[union-attr]


def test_the_media_entries():
    # Figures from docs/pricing.md, "Images and video" (readings 1, 8, 9, 10).
    per_image = {
        "imagen-3.0-generate-002": "0.03",
        "imagen-4.0-fast-generate-001": "0.02",
        "imagen-4.0-generate-001": "0.04",
        "imagen-4.0-ultra-generate-001": "0.06",
    }
    per_second = {
        "veo-2.0-generate-001": ("0.35", {}),
        "veo-3.0-generate-001": ("0.40", {}),
        "veo-3.0-fast-generate-001": ("0.15", {}),
        "veo-3.1-generate-preview": ("0.40", {"1080p": "0.40", "4k": "0.60"}),
        "veo-3.1-fast-generate-preview": ("0.10", {"1080p": "0.12", "4k": "0.30"}),
        "veo-3.1-lite-generate-preview": ("0.05", {"1080p": "0.08"}),
    }
    media = [m for m in CATALOG.models() if m.startswith(("imagen-", "veo-"))]
    assert sorted(media) == sorted([*per_image, *per_second])
    for model, rate in per_image.items():
        entry = CATALOG.entry(model, AT)
        assert entry is not None and entry.per_image == D(rate)
        assert entry.per_video_second is None
    for model, (rate, by_resolution) in per_second.items():
        entry = CATALOG.entry(model, AT)
        assert entry is not None and entry.per_video_second == D(rate)
        assert dict(entry.per_video_second_by_resolution) == {
            k: D(v) for k, v in by_resolution.items()
        }
    for model in media:
        for entry in CATALOG.entries(model):
            # no token rates, and no tier changes the price
            assert entry.rates.input == entry.rates.output == entry.rates.cached == 0
            assert all(f == 1 for f in entry.tiers.values())
            assert entry.confirmed or (entry.unconfirmed and entry.note)
    # Veo 3.1 Fast before its cut: $0.15 at 720p and 1080p, $0.35 at 4k
    (before, after) = CATALOG.entries("veo-3.1-fast-generate-preview")
    assert (before.effective_from, after.effective_from) == (date(2025, 10, 15), date(2026, 3, 31))
    assert before.per_video_second == D("0.15")
    assert dict(before.per_video_second_by_resolution) == {"1080p": D("0.15"), "4k": D("0.35")}


def test_resolution_prices_need_a_base_rate(tmp_path: Path):
    user = tmp_path / "prices.toml"
    user.write_text(
        """
[[models."veo-x"]]
effective_from = 2026-01-01
source = "s"
read_on = 2026-01-01
confirmed = true
per_video_second_by_resolution = { "4K" = "0.60" }
"""
    )
    with pytest.raises(ConfigError, match="needs per_video_second"):
        load_catalog(user)
    user.write_text(
        user.read_text().replace("confirmed = true", 'confirmed = true\nper_video_second = "0.40"')
    )
    # resolution names are read in any case, as the record's lower-cased ones
    entry = load_catalog(user).entry("veo-x", date(2026, 1, 2))
    assert entry is not None and dict(entry.per_video_second_by_resolution) == {"4k": D("0.60")}


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("gemini-2.5-pro", "gemini-2.5-pro"),
        ("models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("  Models/Gemini-2.5-Pro ", "gemini-2.5-pro"),
        # dated and -MM-YYYY suffixes resolve only through explicit aliases
        ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
        ("models/gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
        # priced apart from gemini-2.5-flash on 2025-10-08, so not aliased to it
        ("gemini-2.5-flash-preview-09-2025", None),
        ("gemini-2.5-flash-lite-preview-09-2025", "gemini-2.5-flash-lite"),
        ("gemini-3.1-flash-lite-preview", "gemini-3.1-flash-lite"),
        ("gemini-3.1-pro-preview-customtools", "gemini-3.1-pro-preview"),
        ("gemini-3-pro-preview", "gemini-3-pro-preview"),
        # never by prefix or similarity
        ("gemini-2.5-flash-preview-06-30", None),
        ("gemini-2.5-pro-001", None),
        ("gemini-2.5", None),
        ("gemini-3.7-flash", None),
        ("gemini-2.5-flash-image-preview", "gemini-2.5-flash-image"),
        ("gemini-flash-latest", None),
        ("tunedModels/gemini-2.5-pro", None),
        ("", None),
        (None, None),
    ],
)
def test_resolve(name: str | None, canonical: str | None):
    assert CATALOG.resolve(name) == canonical


# --- effective dates and the user file ------------------------------------------------------


ENTRY_2027 = """
[[models."gemini-2.5-flash"]]
effective_from = 2027-01-01
source = "https://example.invalid/prices"
read_on = 2026-11-20
confirmed = true
input = "0.60"
input_by_modality = { audio = "2.00" }
output = "5.00"
cached = "0.06"
cached_by_modality = { audio = "0.20" }
tiers = { flex = "0.5", batch = "0.5", priority = "2" }
grounding.google_search = { unit = "prompt", per_1000 = "35" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("at", "rate"),
    [
        (datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), "0.30"),
        (datetime(2027, 1, 1, 0, 0, tzinfo=UTC), "0.60"),
        # 20:00 at UTC-5 on Dec 31 is 01:00 UTC on Jan 1: the UTC date decides
        (datetime(2026, 12, 31, 20, 0, tzinfo=timezone(timedelta(hours=-5))), "0.60"),
        # naive times are UTC
        (datetime(2026, 12, 31, 23, 0), "0.30"),
        (datetime(2030, 6, 1, tzinfo=UTC), "0.60"),
    ],
)
def test_effective_date_selection(tmp_path: Path, at: datetime, rate: str):
    catalog = load_catalog(write(tmp_path, ENTRY_2027))
    # 1,000,000 input tokens x rate
    cost = price(catalog, "gemini-2.5-flash", usage(input_tokens=1_000_000), at=at)
    assert cost.total == D(rate)


def test_the_shipped_catalog_changes_a_rate_on_a_date():
    # gemini-2.5-flash-lite's cache rate: 0.025 until 2025-11-17, 0.01 from 2025-11-18
    # 1,000,000 cached of a 1,000,000 prompt x rate
    u = usage(input_tokens=1_000_000, cached_tokens=1_000_000)
    before = price(CATALOG, "gemini-2.5-flash-lite", u, at=datetime(2025, 11, 17, 23, tzinfo=UTC))
    after = price(CATALOG, "gemini-2.5-flash-lite", u, at=datetime(2025, 11, 18, tzinfo=UTC))
    assert (before.total, after.total) == (D("0.025"), D("0.01"))
    entries = CATALOG.entries("gemini-2.5-flash-lite")
    assert [e.effective_from for e in entries] == [date(2025, 10, 8), date(2025, 11, 18)]
    # the older entry's audio cache rate, 2025-11-17: 10,000 x 0.10 = 0.001 uncached;
    # cached audio 2,000 x 0.125 = 0.00025 + text 8,000 x 0.025 = 0.0002 -> 0.00045
    u = usage(
        input_tokens=20_000,
        cached_tokens=10_000,
        cached_by_modality={"audio": 2_000, "text": 8_000},
    )
    cost = price(CATALOG, "gemini-2.5-flash-lite", u, at=datetime(2025, 11, 17, tzinfo=UTC))
    assert_cost(cost, {"input": "0.001", "cached": "0.00045", "total": "0.00145"})


def test_before_the_first_entry_is_unpriced():
    # gemini-2.5-pro's first entry is effective 2025-10-08
    at = datetime(2025, 10, 7, 23, 59, tzinfo=UTC)
    assert CATALOG.entry("gemini-2.5-pro", at) is None
    assert price(CATALOG, "gemini-2.5-pro", usage(input_tokens=1), at=at) is UNPRICED
    assert CATALOG.entry("gemini-2.5-pro", date(2025, 10, 8)) is not None


def test_the_entry_in_force_is_kept_per_model_and_day_and_stays_right(
    monkeypatch: pytest.MonkeyPatch,
):
    # Veo 3.1 Fast's entries (shipped prices.toml): 2025-10-15 and, after its cut, 2026-03-31
    catalog = load_catalog()
    model = "veo-3.1-fast-generate-preview"
    (before, after) = catalog.entries(model)
    # asked again and again across the cut, in either order: each day gets its own entry
    for _ in range(2):
        assert catalog.entry(model, datetime(2026, 3, 30, 23, 59, 59, tzinfo=UTC)) is before
        assert catalog.entry(model, datetime(2026, 3, 31, tzinfo=UTC)) is after
        # 2026-03-31 01:00 at UTC+02:00 is 2026-03-30 23:00 UTC: still the old price
        plus_two = timezone(timedelta(hours=2))
        assert catalog.entry(model, datetime(2026, 3, 31, 1, tzinfo=plus_two)) is before
        assert catalog.entry("models/VEO-3.1-fast-generate-preview", date(2026, 4, 1)) is after
        assert catalog.entry(model, date(2025, 10, 14)) is None
    # kept: a (model, day) asked before is answered without reading the entries again
    with monkeypatch.context() as patched:

        def read_again(name: str) -> tuple[ModelPrices, ...]:
            pytest.fail(f"{name}'s entries read again")

        patched.setattr(catalog, "entries", read_again)
        assert catalog.entry(model, datetime(2026, 3, 31, 12, tzinfo=UTC)) is after
    # names from the wire cannot grow it without bound
    for n in range(10_000):
        assert catalog.entry(f"invented-{n}", date(2026, 1, 1)) is None
    assert len(catalog._in_force) <= 4096
    assert catalog.entry(model, date(2026, 3, 31)) is after


USER_OVERRIDE = """
version = "ignored-the-hash-names-this-file"

[aliases]
"my-model-latest" = "my-tuned-model"

# replaces the package's 2025-10-08 entry of gemini-2.5-pro: same model, same date
[[models."models/gemini-2.5-pro"]]
effective_from = 2025-10-08
source = "https://example.invalid/negotiated"
read_on = 2026-11-01
confirmed = false
unconfirmed = ["input"]
note = "Our negotiated discount."
input = "1.00"
output = "10.00"
cached = "0.125"
tiers = { flex = "0.5", batch = "0.5", priority = "1.8" }
long_context = { threshold = 200000, input = "2.00", output = "15.00", cached = "0.25" }

[[models."my-tuned-model"]]
effective_from = 2026-01-01
source = "https://example.invalid/tuned"
read_on = 2026-01-01
confirmed = true
input = "0.40"
output = "1.60"
cached = "0.04"
tiers = { flex = "0.5", batch = "0.5", priority = "1.75" }
cached_tiers = { priority = "1.75" }
grounding.google_search = { unit = "query", per_1000 = "14" }

# a model priced under a name the package uses as an alias supersedes that alias
[[models."gemini-3.1-flash-lite-preview"]]
effective_from = 2026-01-01
source = "https://example.invalid/preview"
read_on = 2026-01-01
confirmed = true
input = "0.20"
output = "1.00"
cached = "0.02"
tiers = { flex = "0.5", batch = "0.5", priority = "1.8" }
"""


def test_user_file_overrides_and_extends(tmp_path: Path):
    path = write(tmp_path, USER_OVERRIDE)
    catalog = load_catalog(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert catalog.version == f"2026-11-29.2+user.{digest}"

    # replaced: 100,000 x 1.00 = 0.1 (was 1.25); long tier 300,000 x 2.00 = 0.6
    assert price(catalog, "gemini-2.5-pro", usage(input_tokens=100_000), at=AT).total == D("0.1")
    assert price(catalog, "gemini-2.5-pro", usage(input_tokens=300_000), at=AT).total == D("0.6")
    assert len(catalog.entries("gemini-2.5-pro")) == 1
    assert catalog.entry("gemini-2.5-pro", AT).source == "https://example.invalid/negotiated"  # type: ignore[union-attr]

    # added, with its alias, at priority x 1.75: 1,000,000 x 0.40 x 1.75 = 0.7;
    # 1,000 x 1.60 x 1.75 = 0.0028; 2 queries x 14 / 1,000 = 0.028 (fees are not scaled)
    u = usage(input_tokens=1_000_000, output_tokens=1_000, grounding={"google_search": 2})
    cost = price(catalog, "my-model-latest", u, service_tier="priority", at=AT)
    assert (cost.input, cost.output, cost.grounding) == (D("0.7"), D("0.0028"), D("0.028"))
    assert cost.total == D("0.7308") and cost.catalog_version == catalog.version
    # its cached_tiers scales cached tokens under priority: 100,000 x 0.04 x 1.75 = 0.007;
    # tiers it leaves out are 1: under flex 100,000 x 0.04 = 0.004
    cached = usage(input_tokens=100_000, cached_tokens=100_000)
    assert price(catalog, "my-tuned-model", cached, service_tier="priority", at=AT).cached == D(
        "0.007"
    )
    assert price(catalog, "my-tuned-model", cached, service_tier="flex", at=AT).cached == D("0.004")

    # the package alias gave way to the user's own model of that name
    assert catalog.resolve("gemini-3.1-flash-lite-preview") == "gemini-3.1-flash-lite-preview"
    # everything else is the package's: 1,000,000 x 1.50
    assert price(catalog, "gemini-3.5-flash", usage(input_tokens=1_000_000), at=AT).total == D(
        "1.5"
    )
    assert price(catalog, "gemini-2.5-flash-preview-05-20", usage(input_tokens=1), at=AT).total


def test_the_same_user_file_gives_the_same_version(tmp_path: Path):
    a = load_catalog(write(tmp_path, ENTRY_2027)).version
    b = load_catalog(write(tmp_path, ENTRY_2027)).version
    c = load_catalog(write(tmp_path, ENTRY_2027 + "\n# edited\n")).version
    assert a == b != c and a.startswith("2026-11-29.2+user.")


MALFORMED = [
    ("not toml", "[[models.x]\n", "not valid TOML"),
    ("float rate", ENTRY_2027.replace('input = "0.60"', "input = 0.60"), "decimal string"),
    ("integer rate", ENTRY_2027.replace('output = "5.00"', "output = 5"), "decimal string"),
    ("negative rate", ENTRY_2027.replace('"0.60"', '"-0.60"'), ">= 0"),
    ("not a number", ENTRY_2027.replace('"0.60"', '"cheap"'), "not a decimal"),
    ("NaN", ENTRY_2027.replace('"0.60"', '"NaN"'), "finite"),
    ("missing cached", ENTRY_2027.replace('cached = "0.06"\n', ""), "missing cached"),
    (
        "missing source",
        ENTRY_2027.replace('source = "https://example.invalid/prices"\n', ""),
        "missing source",
    ),
    ("unknown key", ENTRY_2027 + 'oputput = "1"\n', "unknown key(s) oputput"),
    ("unknown top-level key", "[model]\n", "unknown key(s) model"),
    ("missing tier", ENTRY_2027.replace(', priority = "2"', ""), "missing factor(s) for priority"),
    (
        "standard tier",
        ENTRY_2027.replace('priority = "2"', 'priority = "2", standard = "1"'),
        "standard is always 1",
    ),
    (
        "cached tier typo",
        ENTRY_2027 + 'cached_tiers = { priorty = "1" }\n',
        "unknown key(s) priorty",
    ),
    (
        "bad grounding unit",
        ENTRY_2027.replace('unit = "prompt"', 'unit = "request"'),
        '"prompt" or "query"',
    ),
    (
        "unconfirmed without a note",
        ENTRY_2027.replace("confirmed = true", "confirmed = false"),
        "needs a note",
    ),
    ("confirmed and unconfirmed", ENTRY_2027 + 'unconfirmed = ["input"]\n', "contradicts"),
    (
        "date-time effective date",
        ENTRY_2027.replace("effective_from = 2027-01-01", "effective_from = 2027-01-01T00:00:00Z"),
        "not a date-time",
    ),
    ("repeated date", ENTRY_2027 + ENTRY_2027, "repeats an earlier entry's date"),
    ("alias to nothing", '[aliases]\n"x" = "no-such-model"\n', "which has no entry"),
    ("alias over a model", '[aliases]\n"gemini-2.5-pro" = "gemini-2.5-flash"\n', "is a model name"),
    ("alias chain", '[aliases]\n"a" = "b"\n"b" = "gemini-2.5-pro"\n', "another alias"),
    (
        "long context without audio",
        ENTRY_2027
        + 'long_context = { threshold = 200000, input = "1", output = "1", cached = "1" }\n',
        "must also price audio",
    ),
    (
        "zero threshold",
        ENTRY_2027.replace('input_by_modality = { audio = "2.00" }\n', "").replace(
            'cached_by_modality = { audio = "0.20" }\n', ""
        )
        + 'long_context = { threshold = 0, input = "1", output = "1", cached = "1" }\n',
        "positive integer",
    ),
    ("version with spaces", 'version = "my prices"\n', "must not contain spaces"),
    (
        "output modality rate as a number",
        ENTRY_2027 + "output_by_modality = { image = 30 }\n",
        "output_by_modality.image: must be a decimal string",
    ),
    (
        "long context without the image output rate",
        ENTRY_2027.replace('input_by_modality = { audio = "2.00" }\n', "").replace(
            'cached_by_modality = { audio = "0.20" }\n', ""
        )
        + 'output_by_modality = { image = "30" }\n'
        + 'long_context = { threshold = 200000, input = "1", output = "1", cached = "1" }\n',
        "long_context.output_by_modality: must also price image",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_user_file_is_a_config_error(tmp_path: Path, text: str, message: str):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_catalog(path)
    assert message in str(raised.value)
    assert str(path) in str(raised.value)  # says which file


def test_unreadable_user_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read the price catalog"):
        load_catalog(tmp_path / "missing.toml")
    bad = tmp_path / "binary.toml"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_catalog(bad)


def test_catalog_can_be_built_directly():
    entry = CATALOG.entry("gemini-3.5-flash", AT)
    assert isinstance(entry, ModelPrices)
    catalog = Catalog(
        "test.1", {"models/Custom": [replace(entry, model="custom")]}, {"c": "custom"}
    )
    assert catalog.models() == ["custom"] and catalog.resolve("C") == "custom"
    with pytest.raises(ConfigError):
        Catalog("test.1", {"custom": [entry]}, {"c": "missing"})


def test_output_by_modality_is_read_for_every_tier(tmp_path: Path):
    # a user entry pricing image output apart, above a long-context threshold too:
    # 1,000 image tokens x 40 = 0.04 at the base tier; 1,000 x 60 = 0.06 above 100 tokens
    entry = (
        ENTRY_2027.replace('input_by_modality = { audio = "2.00" }\n', "").replace(
            'cached_by_modality = { audio = "0.20" }\n', ""
        )
        + 'output_by_modality = { image = "40" }\n'
        + "long_context = { threshold = 100, "
        + 'input = "1", output = "5", cached = "1", output_by_modality = { image = "60" } }\n'
    )
    catalog = load_catalog(write(tmp_path, entry))
    at = datetime(2027, 1, 2, tzinfo=UTC)
    image = usage(output_tokens=1_000, output_by_modality={"image": 1_000})
    assert price(catalog, "gemini-2.5-flash", image, at=at).output == D("0.04")
    long_prompt = replace(image, input_tokens=101)
    assert price(catalog, "gemini-2.5-flash", long_prompt, at=at).output == D("0.06")


def test_gemini_3_8_flash_price_rises_on_2027_01_01():
    # Google's page: $0.75 / $3.75 "through December 31, 2026", $1.50 / $7.50 "starting
    # January 1, 2027": 1M input + 100k output = 0.75 + 0.375 before, 1.50 + 0.75 after
    u = usage(input_tokens=1_000_000, output_tokens=100_000)
    before = price(CATALOG, "gemini-3.8-flash", u, at=datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    after = price(CATALOG, "gemini-3.8-flash", u, at=datetime(2027, 1, 1, tzinfo=UTC))
    assert (before.total, after.total) == (D("1.125"), D("2.25"))
