"""The cost engine (``proxy.pricing.cost``): ``price`` from a usage to an exact cost.

Every expected figure below is worked by hand from the catalog's published rates (USD per
1M tokens, so a charge is tokens x rate / 1,000,000), with the arithmetic in a comment; the
table covers every model the shipped catalog prices. Property tests then check the engine's
invariants over arbitrary usage.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import fields, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.metering.parsers import GenerateAccumulator
from proxy.metering.records import UNPRICED, Cost, Usage
from proxy.pricing import load_catalog, price
from tests.factories import AT, CATALOG, COST_PARTS, D, assert_cost, usage

# (case id, model, usage, service tier, expected non-zero parts; unlisted parts are 0)
CASES: list[tuple[str, str, Usage, str | None, dict[str, str]]] = [
    # --- gemini-2.5-pro: $1.25 / $10.00, cached $0.125; > 200k: $2.50 / $15.00 / $0.25;
    #     Search grounding $35 per 1,000 grounded prompts
    (
        # prompt of exactly 200,000 stays in the base tier:
        # 200,000 x 1.25 = 0.25; 1,000 x 10 = 0.01; 500 thinking x 10 = 0.005
        "2.5-pro prompt exactly 200,000 (base tier)",
        "gemini-2.5-pro",
        usage(input_tokens=200_000, output_tokens=1_000, thinking_tokens=500),
        None,
        {"input": "0.25", "output": "0.01", "thinking": "0.005", "total": "0.265"},
    ),
    (
        # 200,001 > 200,000: the whole request bills long-context:
        # 200,001 x 2.50 = 0.5000025; 1,000 x 15 = 0.015; 500 x 15 = 0.0075
        "2.5-pro prompt 200,001 (long-context tier)",
        "gemini-2.5-pro",
        usage(input_tokens=200_001, output_tokens=1_000, thinking_tokens=500),
        None,
        {"input": "0.5000025", "output": "0.015", "thinking": "0.0075", "total": "0.5225025"},
    ),
    (
        # the prompt counts its cached part: 200,000 incl. 150,000 cached is base tier:
        # (200,000 - 150,000) x 1.25 = 0.0625; 150,000 x 0.125 = 0.01875
        "2.5-pro cached inside a 200,000 prompt",
        "gemini-2.5-pro",
        usage(input_tokens=200_000, cached_tokens=150_000),
        None,
        {"input": "0.0625", "cached": "0.01875", "total": "0.08125"},
    ),
    (
        # 300,000 incl. 100,000 cached is long-context:
        # 200,000 x 2.50 = 0.5; 100,000 x 0.25 = 0.025
        "2.5-pro cached in a long prompt",
        "gemini-2.5-pro",
        usage(input_tokens=300_000, cached_tokens=100_000),
        None,
        {"input": "0.5", "cached": "0.025", "total": "0.525"},
    ),
    (
        # (100,000 - 40,000) x 1.25 = 0.075; 40,000 x 0.125 = 0.005;
        # intermediate bills as input: 10,000 x 1.25 = 0.0125; 2,000 x 10 = 0.02
        "2.5-pro cached and intermediate",
        "gemini-2.5-pro",
        usage(
            input_tokens=100_000,
            cached_tokens=40_000,
            intermediate_tokens=10_000,
            output_tokens=2_000,
        ),
        None,
        {
            "input": "0.075",
            "cached": "0.005",
            "intermediate": "0.0125",
            "output": "0.02",
            "total": "0.1125",
        },
    ),
    (
        # flex x 0.5: 10,000 x 1.25 x 0.5 = 0.00625; 1,000 x 10 x 0.5 = 0.005
        "2.5-pro flex",
        "gemini-2.5-pro",
        usage(input_tokens=10_000, output_tokens=1_000),
        "flex",
        {"input": "0.00625", "output": "0.005", "total": "0.01125"},
    ),
    (
        # batch x 0.5, as flex
        "2.5-pro batch",
        "gemini-2.5-pro",
        usage(input_tokens=10_000, output_tokens=1_000),
        "batch",
        {"input": "0.00625", "output": "0.005", "total": "0.01125"},
    ),
    (
        # the Interactions API's deferred tier bills as batch
        "2.5-pro deferred",
        "gemini-2.5-pro",
        usage(input_tokens=10_000, output_tokens=1_000),
        "deferred",
        {"input": "0.00625", "output": "0.005", "total": "0.01125"},
    ),
    (
        # priority x 1.8: 10,000 x 1.25 x 1.8 = 0.0225; 1,000 x 10 x 1.8 = 0.018
        "2.5-pro priority",
        "gemini-2.5-pro",
        usage(input_tokens=10_000, output_tokens=1_000),
        "priority",
        {"input": "0.0225", "output": "0.018", "total": "0.0405"},
    ),
    (
        # 1,000 x 1.25 = 0.00125; three searches in one request are ONE grounded prompt:
        # 35 / 1,000 = 0.035
        "2.5-pro search grounding per prompt",
        "gemini-2.5-pro",
        usage(input_tokens=1_000, grounding={"google_search": 3}),
        None,
        {"input": "0.00125", "grounding": "0.035", "total": "0.03625"},
    ),
    # --- gemini-2.5-flash: $0.30 text/image/video, $1.00 audio; output $2.50;
    #     cached $0.03, audio $0.10; Search $35 / Maps $25 per 1,000 grounded prompts
    (
        # 10,000 x 0.30 = 0.003; 2,000 x 2.50 = 0.005; thinking 3,000 x 2.50 = 0.0075
        "2.5-flash text with thinking",
        "gemini-2.5-flash",
        usage(input_tokens=10_000, output_tokens=2_000, thinking_tokens=3_000),
        None,
        {"input": "0.003", "output": "0.005", "thinking": "0.0075", "total": "0.0155"},
    ),
    (
        # audio 4,000 x 1.00 = 0.004; text 6,000 x 0.30 = 0.0018
        "2.5-flash audio vs text input",
        "gemini-2.5-flash",
        usage(input_tokens=10_000, input_by_modality={"text": 6_000, "audio": 4_000}),
        None,
        {"input": "0.0058", "total": "0.0058"},
    ),
    (
        # uncached audio 4,000 - 1,000 = 3,000 x 1.00 = 0.003; the other uncached
        # (10,000 - 3,000) - 3,000 = 4,000 are text x 0.30 = 0.0012  -> input 0.0042
        # cached audio 1,000 x 0.10 = 0.0001; cached text 2,000 x 0.03 = 0.00006
        "2.5-flash cached audio",
        "gemini-2.5-flash",
        usage(
            input_tokens=10_000,
            input_by_modality={"text": 6_000, "audio": 4_000},
            cached_tokens=3_000,
            cached_by_modality={"text": 2_000, "audio": 1_000},
        ),
        None,
        {"input": "0.0042", "cached": "0.00016", "total": "0.00436"},
    ),
    (
        # priority x 1.8: 1,000,000 x 0.30 x 1.8 = 0.54; 100,000 x 2.50 x 1.8 = 0.45
        "2.5-flash priority",
        "gemini-2.5-flash",
        usage(input_tokens=1_000_000, output_tokens=100_000),
        "priority",
        {"input": "0.54", "output": "0.45", "total": "0.99"},
    ),
    (
        # Maps grounding: one grounded prompt, 25 / 1,000 = 0.025
        "2.5-flash maps grounding",
        "gemini-2.5-flash",
        usage(grounding={"google_maps": 2}),
        None,
        {"grounding": "0.025", "total": "0.025"},
    ),
    # --- gemini-2.5-flash-lite: $0.10, audio $0.30; output $0.40; cached $0.01, audio $0.03
    (
        # audio 5,000 x 0.30 = 0.0015; 1,000 x 0.40 = 0.0004
        "2.5-flash-lite audio",
        "gemini-2.5-flash-lite",
        usage(input_tokens=5_000, input_by_modality={"audio": 5_000}, output_tokens=1_000),
        None,
        {"input": "0.0015", "output": "0.0004", "total": "0.0019"},
    ),
    (
        # batch x 0.5 on uncached tokens: 10,000 x 0.10 x 0.5 = 0.0005;
        # 1,000 x 0.40 x 0.5 = 0.0002; cached tokens keep their rate in every tier
        # (the page's batch row repeats the standard cache price): 10,000 x 0.01 = 0.0001
        "2.5-flash-lite cached, batch",
        "gemini-2.5-flash-lite",
        usage(input_tokens=20_000, cached_tokens=10_000, output_tokens=1_000),
        "batch",
        {"input": "0.0005", "cached": "0.0001", "output": "0.0002", "total": "0.0008"},
    ),
    # --- gemini-3-pro-preview: $2 / $12, cached $0.20; > 200k: $4 / $18 / $0.40;
    #     Search $14 per 1,000 queries
    (
        # 200,000 x 2 = 0.4; 1,000 x 12 = 0.012
        "3-pro-preview prompt exactly 200,000",
        "gemini-3-pro-preview",
        usage(input_tokens=200_000, output_tokens=1_000),
        None,
        {"input": "0.4", "output": "0.012", "total": "0.412"},
    ),
    (
        # 200,001 x 4 = 0.800004; 1,000 x 18 = 0.018
        "3-pro-preview prompt 200,001",
        "gemini-3-pro-preview",
        usage(input_tokens=200_001, output_tokens=1_000),
        None,
        {"input": "0.800004", "output": "0.018", "total": "0.818004"},
    ),
    (
        # 1,000 x 2 = 0.002; per query: 3 x 14 / 1,000 = 0.042
        "3-pro-preview search grounding per query",
        "gemini-3-pro-preview",
        usage(input_tokens=1_000, grounding={"google_search": 3}),
        None,
        {"input": "0.002", "grounding": "0.042", "total": "0.044"},
    ),
    # --- gemini-3-flash-preview: $0.50, audio $1.00; output $3.00; cached $0.05, audio $0.10
    (
        # uncached 8,000 - 4,000 = 4,000: audio 2,000 - 1,000 = 1,000 x 1.00 = 0.001,
        # text 3,000 x 0.50 = 0.0015 -> 0.0025; cached audio 1,000 x 0.10 = 0.0001,
        # cached text 3,000 x 0.05 = 0.00015 -> 0.00025
        "3-flash-preview audio and cached audio",
        "gemini-3-flash-preview",
        usage(
            input_tokens=8_000,
            input_by_modality={"audio": 2_000, "text": 6_000},
            cached_tokens=4_000,
            cached_by_modality={"audio": 1_000, "text": 3_000},
        ),
        None,
        {"input": "0.0025", "cached": "0.00025", "total": "0.00275"},
    ),
    (
        # flex x 0.5: 1,000 x 0.50 x 0.5 = 0.00025; thinking 10,000 x 3 x 0.5 = 0.015
        "3-flash-preview flex thinking",
        "gemini-3-flash-preview",
        usage(input_tokens=1_000, thinking_tokens=10_000),
        "flex",
        {"input": "0.00025", "thinking": "0.015", "total": "0.01525"},
    ),
    (
        # 2 queries x 14 / 1,000 = 0.028, not halved by flex (fees are not token charges)
        "3-flash-preview search queries under flex",
        "gemini-3-flash-preview",
        usage(grounding={"google_search": 2}),
        "flex",
        {"grounding": "0.028", "total": "0.028"},
    ),
    # --- gemini-3.1-pro-preview: as 3 Pro
    (
        # base tier: (200,000 - 50,000) x 2 = 0.3; 50,000 x 0.20 = 0.01; 2,000 x 12 = 0.024
        "3.1-pro-preview prompt exactly 200,000 with cache",
        "gemini-3.1-pro-preview",
        usage(input_tokens=200_000, cached_tokens=50_000, output_tokens=2_000),
        None,
        {"input": "0.3", "cached": "0.01", "output": "0.024", "total": "0.334"},
    ),
    (
        # long tier and priority x 1.8: 150,001 x 4 x 1.8 = 1.0800072;
        # 2,000 x 18 x 1.8 = 0.0648; cached at the long-tier cache rate, times the cached
        # priority factor (1.8 since 2026-11-29): 50,000 x 0.40 x 1.8 = 0.036
        "3.1-pro-preview prompt 200,001, priority",
        "gemini-3.1-pro-preview",
        usage(input_tokens=200_001, cached_tokens=50_000, output_tokens=2_000),
        "priority",
        {"input": "1.0800072", "cached": "0.036", "output": "0.0648", "total": "1.1808072"},
    ),
    # --- gemini-3.1-flash-lite: $0.25, audio $0.50; output $1.50; cached $0.025, audio $0.05
    (
        # audio 1,000 x 0.50 = 0.0005 + text 3,000 x 0.25 = 0.00075 -> 0.00125;
        # intermediate 2,000 x 0.25 = 0.0005; 500 x 1.50 = 0.00075
        "3.1-flash-lite audio and intermediate",
        "gemini-3.1-flash-lite",
        usage(
            input_tokens=4_000,
            input_by_modality={"audio": 1_000, "text": 3_000},
            intermediate_tokens=2_000,
            output_tokens=500,
        ),
        None,
        {"input": "0.00125", "intermediate": "0.0005", "output": "0.00075", "total": "0.0025"},
    ),
    (
        # all cached audio: 10,000 x 0.05 = 0.0005; nothing uncached
        "3.1-flash-lite all cached audio",
        "gemini-3.1-flash-lite",
        usage(
            input_tokens=10_000,
            input_by_modality={"audio": 10_000},
            cached_tokens=10_000,
            cached_by_modality={"audio": 10_000},
        ),
        None,
        {"cached": "0.0005", "total": "0.0005"},
    ),
    # --- cached tokens without a cached-by-modality breakdown (gemini-2.5-flash: input
    #     $0.30, audio $1.00; cached $0.03, audio $0.10)
    (
        # an all-audio prompt, all cached, no cacheTokensDetails: the cached tokens are
        # audio, 10,000 x 0.10 = 0.001 (charged as text before: 10,000 x 0.03 = 0.0003)
        "2.5-flash all-audio prompt cached, no cached breakdown",
        "gemini-2.5-flash",
        usage(input_tokens=10_000, input_by_modality={"audio": 10_000}, cached_tokens=10_000),
        None,
        {"cached": "0.001", "total": "0.001"},
    ),
    (
        # audio prompt, 4,000 of 10,000 cached: 4,000 x 0.10 = 0.0004 cached;
        # 6,000 uncached audio x 1.00 = 0.006
        "2.5-flash audio prompt partly cached, no cached breakdown",
        "gemini-2.5-flash",
        usage(input_tokens=10_000, input_by_modality={"audio": 4_000 + 6_000}, cached_tokens=4_000),
        None,
        {"input": "0.006", "cached": "0.0004", "total": "0.0064"},
    ),
    (
        # mixed prompt, text 6,000 + audio 4,000, 7,000 cached: caching text saves
        # 0.30 - 0.03 = 0.27 per 1M, audio 1.00 - 0.10 = 0.90, so text is assigned first
        # (the upper bound): cached text 6,000 x 0.03 = 0.00018 + audio 1,000 x 0.10 =
        # 0.0001 -> 0.00028; uncached audio 3,000 x 1.00 = 0.003; total 0.00328.
        # (Audio first would give 0.00049 + text 3,000 x 0.30 = 0.0009 -> 0.00139, less.)
        "2.5-flash mixed prompt cached, no cached breakdown (upper bound)",
        "gemini-2.5-flash",
        usage(
            input_tokens=10_000,
            input_by_modality={"text": 6_000, "audio": 4_000},
            cached_tokens=7_000,
        ),
        None,
        {"input": "0.003", "cached": "0.00028", "total": "0.00328"},
    ),
    (
        # the breakdown covers audio 4,000 of a 10,000 prompt: the other 6,000 are text;
        # 5,000 cached go to text first: 5,000 x 0.03 = 0.00015; uncached audio
        # 4,000 x 1.00 = 0.004 + text 1,000 x 0.30 = 0.0003 -> 0.0043
        "2.5-flash partial prompt breakdown, cached without breakdown",
        "gemini-2.5-flash",
        usage(input_tokens=10_000, input_by_modality={"audio": 4_000}, cached_tokens=5_000),
        None,
        {"input": "0.0043", "cached": "0.00015", "total": "0.00445"},
    ),
    # --- gemini-3.5-flash: $1.50 for every modality; output $9.00; cached $0.15
    (
        # one input price: audio 10,000 x 1.50 = 0.015
        "3.5-flash audio at the single input rate",
        "gemini-3.5-flash",
        usage(input_tokens=10_000, input_by_modality={"audio": 10_000}),
        None,
        {"input": "0.015", "total": "0.015"},
    ),
    (
        # 20,000 x 1.50 = 0.03; 80,000 x 0.15 = 0.012; 1,000 x 9 = 0.009; 4,000 x 9 = 0.036
        "3.5-flash cached and thinking",
        "gemini-3.5-flash",
        usage(
            input_tokens=100_000,
            cached_tokens=80_000,
            output_tokens=1_000,
            thinking_tokens=4_000,
        ),
        None,
        {
            "input": "0.03",
            "cached": "0.012",
            "output": "0.009",
            "thinking": "0.036",
            "total": "0.087",
        },
    ),
    (
        # deferred = batch x 0.5: 1,000,000 x 1.50 x 0.5 = 0.75; 1,000,000 x 9 x 0.5 = 4.5
        "3.5-flash deferred",
        "gemini-3.5-flash",
        usage(input_tokens=1_000_000, output_tokens=1_000_000),
        "deferred",
        {"input": "0.75", "output": "4.5", "total": "5.25"},
    ),
    (
        # code execution: 1,000 x 1.50 = 0.0015; intermediate 5,000 x 1.50 = 0.0075;
        # 500 x 9 = 0.0045; 2 search queries x 14 / 1,000 = 0.028
        "3.5-flash intermediate and search queries",
        "gemini-3.5-flash",
        usage(
            input_tokens=1_000,
            intermediate_tokens=5_000,
            output_tokens=500,
            grounding={"google_search": 2},
        ),
        None,
        {
            "input": "0.0015",
            "intermediate": "0.0075",
            "output": "0.0045",
            "grounding": "0.028",
            "total": "0.0415",
        },
    ),
    # --- gemini-3.5-flash-lite: $0.30 for every modality; output $2.50; cached $0.03;
    #     Search $14 per 1,000 queries, Maps $25 per 1,000 grounded prompts
    (
        # audio 10,000 x 0.30 = 0.003; 2,000 x 2.50 = 0.005;
        # 3 search queries x 14 / 1,000 = 0.042 + one Maps prompt 25 / 1,000 = 0.025
        "3.5-flash-lite audio, search queries and Maps",
        "gemini-3.5-flash-lite",
        usage(
            input_tokens=10_000,
            input_by_modality={"audio": 10_000},
            output_tokens=2_000,
            grounding={"google_search": 3, "google_maps": 1},
        ),
        None,
        {"input": "0.003", "output": "0.005", "grounding": "0.067", "total": "0.075"},
    ),
    # --- gemini-3.6-flash: $1.50 / $7.50, cached $0.15
    (
        # flex x 0.5, cached flex x 0.5: 60,000 x 1.50 x 0.5 = 0.045;
        # 40,000 x 0.15 x 0.5 = 0.003; 10,000 x 7.50 x 0.5 = 0.0375
        "3.6-flash flex with cache",
        "gemini-3.6-flash",
        usage(input_tokens=100_000, cached_tokens=40_000, output_tokens=10_000),
        "flex",
        {"input": "0.045", "cached": "0.003", "output": "0.0375", "total": "0.0855"},
    ),
    # --- gemini-3.8-flash: $0.75 / $3.75 through 2026-12-31 (AT is 2026-11-24)
    (
        # 1,000,000 x 0.75 = 0.75; 100,000 x 3.75 = 0.375
        "3.8-flash introductory rate",
        "gemini-3.8-flash",
        usage(input_tokens=1_000_000, output_tokens=100_000),
        None,
        {"input": "0.75", "output": "0.375", "total": "1.125"},
    ),
    # --- TTS: text in, audio out (2.5 Flash $0.50 / $10.00, 2.5 Pro $1.00 / $20.00,
    #     3.1 Flash $1.00 / $20.00); batch x 0.5
    (
        # batch: 1,000 x 0.50 x 0.5 = 0.00025; audio 32,000 x 10 x 0.5 = 0.16
        "2.5-flash-tts batch",
        "gemini-2.5-flash-preview-tts",
        usage(input_tokens=1_000, output_tokens=32_000, output_by_modality={"audio": 32_000}),
        "batch",
        {"input": "0.00025", "output": "0.16", "total": "0.16025"},
    ),
    (
        # 1,000 x 1.00 = 0.001; 25,000 x 20 = 0.5
        "2.5-pro-tts",
        "gemini-2.5-pro-preview-tts",
        usage(input_tokens=1_000, output_tokens=25_000, output_by_modality={"audio": 25_000}),
        None,
        {"input": "0.001", "output": "0.5", "total": "0.501"},
    ),
    (
        # 2,000 x 1.00 = 0.002; 10,000 x 20 = 0.2
        "3.1-flash-tts",
        "gemini-3.1-flash-tts-preview",
        usage(input_tokens=2_000, output_tokens=10_000),
        None,
        {"input": "0.002", "output": "0.2", "total": "0.202"},
    ),
    # --- image models: image output tokens at their own rate
    (
        # gemini-2.5-flash-image: 500 x 0.30 = 0.00015; one 1024x1024 image, 1,290 tokens
        # x 30 = 0.0387 (the page's "$0.039 per image") + text 100 x 2.50 = 0.00025
        "2.5-flash-image one image and text",
        "gemini-2.5-flash-image",
        usage(
            input_tokens=500,
            output_tokens=1_390,
            output_by_modality={"image": 1_290, "text": 100},
        ),
        None,
        {"input": "0.00015", "output": "0.03895", "total": "0.0391"},
    ),
    (
        # gemini-3-pro-image-preview: 1,000 x 2 = 0.002; a 1K/2K image of 1,120 tokens x 120
        # = 0.1344 (the page's "$0.134 per 1K/2K image") + text 200 x 12 = 0.0024
        "3-pro-image one image and text",
        "gemini-3-pro-image-preview",
        usage(
            input_tokens=1_000,
            output_tokens=1_320,
            output_by_modality={"image": 1_120, "text": 200},
        ),
        None,
        {"input": "0.002", "output": "0.1368", "total": "0.1388"},
    ),
    # --- Live models: input text $0.50, audio/image/video $3.00; output text $2.00, audio
    #     $12.00
    (
        # text 100 x 0.50 = 0.00005 + audio 5,000 x 3 = 0.015; audio out 3,000 x 12 =
        # 0.036 + text out 50 x 2 = 0.0001
        "native-audio live session",
        "gemini-2.5-flash-native-audio-preview-09-2025",
        usage(
            input_tokens=5_100,
            input_by_modality={"text": 100, "audio": 5_000},
            output_tokens=3_050,
            output_by_modality={"audio": 3_000, "text": 50},
        ),
        None,
        {"input": "0.01505", "output": "0.0361", "total": "0.05115"},
    ),
    (
        # video 2,580 x 3 = 0.00774 + text 20 x 0.50 = 0.00001; audio out 1,000 x 12 = 0.012
        "half-cascade live with video",
        "gemini-live-2.5-flash-preview",
        usage(
            input_tokens=2_600,
            input_by_modality={"video": 2_580, "text": 20},
            output_tokens=1_000,
            output_by_modality={"audio": 1_000},
        ),
        None,
        {"input": "0.00775", "output": "0.012", "total": "0.01975"},
    ),
    # --- embeddings: input only; gemini-embedding-001 $0.15, gemini-embedding-2 $0.20 text,
    #     $0.45 image, $6.50 audio, $12.00 video; batch x 0.5, flex and priority x 1
    (
        # 1,000,000 x 0.15 = 0.15
        "embedding-001 input",
        "gemini-embedding-001",
        usage(input_tokens=1_000_000),
        None,
        {"input": "0.15", "total": "0.15"},
    ),
    (
        # 1,000,000 x 0.15 x 0.5 = 0.075 (the page's batch row); priority has no row: x 1
        "embedding-001 batch",
        "gemini-embedding-001",
        usage(input_tokens=1_000_000),
        "batch",
        {"input": "0.075", "total": "0.075"},
    ),
    (
        # text 8,000 x 0.20 = 0.0016; image 2,000 x 0.45 = 0.0009
        "embedding-2 text and image",
        "gemini-embedding-2",
        usage(input_tokens=10_000, input_by_modality={"text": 8_000, "image": 2_000}),
        "priority",
        {"input": "0.0025", "total": "0.0025"},
    ),
    # --- images: Imagen 4 Fast / Standard / Ultra $0.02 / $0.04 / $0.06, Imagen 3 $0.03 per
    #     image; no tier changes the price
    (
        "imagen-4-fast",
        "imagen-4.0-fast-generate-001",
        Usage(images=4),
        None,
        {"media": "0.08", "total": "0.08"},
    ),  # 4 x 0.02
    (
        "imagen-4",
        "imagen-4.0-generate-001",
        Usage(images=3),
        "batch",
        {"media": "0.12", "total": "0.12"},
    ),  # 3 x 0.04
    (
        "imagen-4-ultra",
        "imagen-4.0-ultra-generate-001",
        Usage(images=1),
        None,
        {"media": "0.06", "total": "0.06"},
    ),
    (
        "imagen-3",
        "imagen-3.0-generate-002",
        Usage(images=2),
        None,
        {"media": "0.06", "total": "0.06"},
    ),  # 2 x 0.03
    # --- video, per second: Veo 2 $0.35, Veo 3 $0.40, Veo 3 Fast $0.15; Veo 3.1 $0.40 (720p,
    #     1080p) / $0.60 (4k); Veo 3.1 Fast $0.10 (720p) / $0.12 (1080p) / $0.30 (4k) and
    #     Lite $0.05 / $0.08 (1080p) from 2026-03-31
    (
        "veo-2",
        "veo-2.0-generate-001",
        Usage(video_seconds=5),
        None,
        {"media": "1.75", "total": "1.75"},
    ),  # 5 x 0.35
    (
        "veo-3",
        "veo-3.0-generate-001",
        Usage(video_seconds=8),
        None,
        {"media": "3.20", "total": "3.20"},
    ),  # 8 x 0.40
    (
        "veo-3-fast",
        "veo-3.0-fast-generate-001",
        Usage(video_seconds=16),
        None,
        {"media": "2.40", "total": "2.40"},
    ),  # 16 x 0.15
    (
        # 8 s at 4k x 0.60 = 4.80; 4 s at 1080p x 0.40 = 1.60; 6 s at 720p x 0.40 = 2.40
        "veo-3.1 by resolution",
        "veo-3.1-generate-preview",
        Usage(video_seconds=18, video_seconds_by_resolution={"4k": 8, "1080p": 4, "720p": 6}),
        None,
        {"media": "8.80", "total": "8.80"},
    ),
    (
        # 8 s at 1080p x 0.12 = 0.96; 8 s at 720p x 0.10 = 0.80; a resolution the entry does
        # not list ("360p", 4 s) bills at the base rate: 4 x 0.10 = 0.40
        "veo-3.1-fast by resolution",
        "veo-3.1-fast-generate-preview",
        Usage(video_seconds=20, video_seconds_by_resolution={"1080p": 8, "720p": 8, "360p": 4}),
        None,
        {"media": "2.16", "total": "2.16"},
    ),
    (
        # a breakdown claiming more than the total is capped: 4 s, all at 1080p x 0.08 = 0.32
        "veo-3.1-lite breakdown capped",
        "veo-3.1-lite-generate-preview",
        Usage(video_seconds=4, video_seconds_by_resolution={"1080p": 10}),
        "priority",
        {"media": "0.32", "total": "0.32"},
    ),
]


@pytest.mark.parametrize(
    ("model", "u", "tier", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hand_worked_cases(model: str, u: Usage, tier: str | None, expected: dict[str, str]):
    assert_cost(price(CATALOG, model, u, service_tier=tier, at=AT), expected)


def test_veo_3_1_fast_before_its_price_cut():
    # 2026-01-15, the first entry: 8 s at 1080p x 0.15 = 1.20; 8 s at 4k x 0.35 = 2.80
    u = Usage(video_seconds=16, video_seconds_by_resolution={"1080p": 8, "4k": 8})
    cost = price(CATALOG, "veo-3.1-fast-generate-preview", u, at=datetime(2026, 1, 15, tzinfo=UTC))
    assert (cost.media, cost.total) == (D("4.00"), D("4.00"))


def test_every_catalog_model_has_hand_worked_cases():
    assert {c[1] for c in CASES} == set(CATALOG.models())


# --- names ------------------------------------------------------------------------------------


def test_an_alias_prices_as_its_target():
    u = usage(input_tokens=200_000, cached_tokens=50_000, output_tokens=2_000)
    direct = price(CATALOG, "gemini-3.1-pro-preview", u, at=AT)
    via_alias = price(CATALOG, "models/gemini-3.1-pro-preview-customtools", u, at=AT)
    assert via_alias == direct and direct.total == D("0.334")
    # 1,000 x 0.30 + 1,000 x 2.50 = 0.0003 + 0.0025
    dated = price(
        CATALOG,
        "gemini-2.5-flash-preview-05-20",
        usage(input_tokens=1_000, output_tokens=1_000),
        at=AT,
    )
    assert dated.total == D("0.0028")


def test_unknown_model_is_unpriced_and_warned_once(caplog: pytest.LogCaptureFixture):
    name = f"gemini-unknown-{uuid.uuid4().hex[:8]}"
    catalog = load_catalog()
    caplog.set_level(logging.WARNING, logger="gemini_meter.pricing")
    for _ in range(3):
        assert price(catalog, name, usage(input_tokens=10), at=AT) is UNPRICED
    warnings = [r for r in caplog.records if name in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert catalog.unpriced_models == {name: 3}
    assert price(catalog, None, usage(input_tokens=10), at=AT) is UNPRICED
    assert catalog.unpriced_models[name] == 3 and catalog.unpriced_models["(none)"] == 1


def test_unpriced_names_kept_are_bounded():
    catalog = load_catalog()
    for i in range(300):
        price(catalog, f"bounded-{i}", usage(), at=AT)
    seen = catalog.unpriced_models
    assert len(seen) <= 257 and sum(seen.values()) == 300 and seen["(other)"] == 300 - 256


# --- tiers, clamping, grounding spellings -------------------------------------------------------


@pytest.mark.parametrize(
    ("tier", "factor"),
    [
        (None, "1"),
        ("standard", "1"),
        ("STANDARD", "1"),
        ("SERVICE_TIER_STANDARD", "1"),
        ("flex", "0.5"),
        ("SERVICE_TIER_FLEX", "0.5"),
        ("batch", "0.5"),
        ("deferred", "0.5"),
        ("priority", "1.8"),
        ("SERVICE_TIER_PRIORITY", "1.8"),
        ("no-such-tier", "1"),  # unknown tiers price at standard
    ],
)
def test_service_tier_spellings(tier: str | None, factor: str):
    # 100,000 x 1.25 = 0.125, times the tier's factor
    cost = price(CATALOG, "gemini-2.5-pro", usage(input_tokens=100_000), service_tier=tier, at=AT)
    assert cost.total == D("0.125") * D(factor)


def test_nonsense_counts_are_clamped_not_raised():
    # cached 5,000 > input 1,000: cached is priced at most the prompt,
    # 1,000 x 0.03 = 0.00003, nothing uncached
    u = Usage(input_tokens=1_000, cached_tokens=5_000)
    cost = price(CATALOG, "gemini-2.5-flash", u, at=AT)
    assert (cost.input, cost.cached, cost.total) == (D("0"), D("0.00003"), D("0.00003"))
    # negative counts count as zero; a modality breakdown above its total is capped:
    # audio 1,000 of a 1,000 prompt x 1.00 = 0.001
    u = Usage(
        input_tokens=1_000,
        input_by_modality={"audio": 9_000},
        output_tokens=-5,
        thinking_tokens=-1,
        cached_by_modality={"audio": -3},
    )
    cost = price(CATALOG, "gemini-2.5-flash", u, at=AT)
    assert (cost.input, cost.output, cost.thinking, cost.total) == (
        D("0.001"),
        D("0"),
        D("0"),
        D("0.001"),
    )


def test_grounding_tool_spellings_and_unknown_tools(caplog: pytest.LogCaptureFixture):
    # Interactions and generateContent spell tools differently: all are the same fee
    for spelled in ("google_search", "googleSearch", "GOOGLE_SEARCH", "google-search"):
        cost = price(CATALOG, "gemini-3.5-flash", usage(grounding={spelled: 1}), at=AT)
        assert cost.grounding == D("0.014"), spelled
    # a tool without a catalog fee is not charged (not guessed) and is logged
    caplog.set_level(logging.WARNING, logger="gemini_meter.pricing")
    cost = price(
        CATALOG, "gemini-3.5-flash", usage(grounding={"url_context": 4, "google_search": 0}), at=AT
    )
    assert cost.grounding == 0 and cost.total == 0
    assert any("url_context" in r.getMessage() for r in caplog.records)


# --- grounding as Google bills it ------------------------------------------------------------

RECORDED = Path(__file__).parents[1] / "fixtures" / "recorded"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # Maps is $25 per 1,000 grounded prompts on every model that supports it (Google's
        # Maps grounding page): one prompt = 25 / 1,000 = 0.025, on 2.5 and 3.x alike.
        # Counted as the Search query it was taken for, it cost 35 / 1,000 = 0.035 on
        # 2.5 Flash and 14 / 1,000 = 0.014 on 3.5 Flash.
        ("gemini-2.5-flash", "0.025"),
        ("gemini-3.5-flash", "0.025"),
    ],
)
def test_google_maps_docs_example_bills_at_the_maps_rate(model: str, expected: str):
    example = json.loads((RECORDED / "generate_maps_grounding_docs_example.json").read_bytes())
    acc = GenerateAccumulator()
    acc.add(example)
    cost = price(CATALOG, model, usage(grounding=acc.grounding()), at=AT)
    assert (cost.grounding, cost.total) == (D(expected), D(expected))


def test_search_queries_billed_per_query_on_gemini_3_and_per_prompt_on_2_5():
    # the response reports 3 distinct non-empty queries (and a repeat and an empty one)
    response = {
        "candidates": [{"groundingMetadata": {"webSearchQueries": ["a", "b", "c", "a", ""]}}]
    }
    acc = GenerateAccumulator()
    acc.add(response)
    grounded = usage(grounding=acc.grounding())
    # Gemini 3: 3 queries x 14 / 1,000 = 0.042; Gemini 2.5: one grounded prompt, 35 / 1,000
    assert price(CATALOG, "gemini-3.5-flash", grounded, at=AT).grounding == D("0.042")
    assert price(CATALOG, "gemini-3.1-pro-preview", grounded, at=AT).grounding == D("0.042")
    assert price(CATALOG, "gemini-2.5-pro", grounded, at=AT).grounding == D("0.035")
    # the fee is the same in every tier: batch halves tokens, not grounding
    batch = price(CATALOG, "gemini-3.5-flash", grounded, service_tier="batch", at=AT)
    assert batch.grounding == D("0.042")


# --- properties ------------------------------------------------------------------------------

TIERS = st.sampled_from([None, "standard", "flex", "batch", "deferred", "priority"])
COUNT = st.integers(min_value=0, max_value=3_000_000)
MODALITIES = st.dictionaries(
    st.sampled_from(["text", "audio", "image", "video", "document"]), COUNT, max_size=3
)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    input_tokens = draw(COUNT)
    return usage(
        input_tokens=input_tokens,
        # sometimes beyond the prompt, to exercise clamping
        cached_tokens=draw(st.integers(min_value=0, max_value=input_tokens + 10)),
        intermediate_tokens=draw(COUNT),
        output_tokens=draw(COUNT),
        thinking_tokens=draw(COUNT),
        input_by_modality=draw(MODALITIES),
        cached_by_modality=draw(MODALITIES),
        intermediate_by_modality=draw(MODALITIES),
        grounding=draw(
            st.dictionaries(
                st.sampled_from(["google_search", "google_maps"]), st.integers(0, 20), max_size=2
            )
        ),
    )


MODELS = st.sampled_from(CATALOG.models())


@settings(max_examples=300)
@given(model=MODELS, u=usages(), tier=TIERS)
def test_total_is_the_exact_sum_of_decimal_parts(model: str, u: Usage, tier: str | None):
    cost = price(CATALOG, model, u, service_tier=tier, at=AT)
    parts = [getattr(cost, p) for p in COST_PARTS]
    for f in fields(Cost):
        value = getattr(cost, f.name)
        assert not isinstance(value, float)
    assert all(isinstance(p, Decimal) and p >= 0 for p in parts)
    assert isinstance(cost.total, Decimal)
    assert cost.total == sum(parts, Decimal(0))


GROWABLE = st.sampled_from(
    [
        "input_tokens",
        "intermediate_tokens",
        "output_tokens",
        "thinking_tokens",
        "cached+input",
        "grounding",
    ]
)


@settings(max_examples=300)
@given(
    model=MODELS,
    u=usages(),
    tier=TIERS,
    which=GROWABLE,
    more=st.integers(min_value=1, max_value=500_000),
)
def test_cost_never_decreases_when_a_count_grows(
    model: str, u: Usage, tier: str | None, which: str, more: int
):
    if which == "cached+input":
        # cached is part of input: more cached tokens means a longer prompt
        grown = replace(u, cached_tokens=u.cached_tokens + more, input_tokens=u.input_tokens + more)
    elif which == "grounding":
        grown = replace(
            u,
            grounding={**u.grounding, "google_search": u.grounding.get("google_search", 0) + more},
        )
    else:
        grown = replace(u, **{which: getattr(u, which) + more})
    before = price(CATALOG, model, u, service_tier=tier, at=AT)
    after = price(CATALOG, model, grown, service_tier=tier, at=AT)
    assert before.total is not None and after.total is not None
    assert after.total >= before.total


# --- units other than tokens: images, seconds of video, cache storage ------------------------

MEDIA_ENTRIES = """
[[models."test-image-model"]]
effective_from = 2026-01-01
source = "https://example.invalid/prices"
read_on = 2026-11-20
confirmed = true
per_image = "0.04"

[[models."test-video-model"]]
effective_from = 2026-01-01
source = "https://example.invalid/prices"
read_on = 2026-11-20
confirmed = true
per_video_second = "0.40"

[[models."test-cache-model"]]
effective_from = 2026-01-01
source = "https://example.invalid/prices"
read_on = 2026-11-20
confirmed = true
input = "0.30"
output = "2.50"
cached = "0.03"
cache_storage_per_hour = "1.00"
tiers = { flex = "0.5", batch = "0.5", priority = "1.8" }
"""


@pytest.fixture
def media_catalog(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(MEDIA_ENTRIES, encoding="utf-8")
    return load_catalog(path)


def test_images_and_video_seconds_bill_at_their_unit_rates(media_catalog):
    # 3 images x $0.04 = $0.12
    images = price(media_catalog, "test-image-model", Usage(images=3), at=AT)
    assert (images.media, images.total) == (D("0.12"), D("0.12"))
    # two 8-second videos: 16 s x $0.40 = $6.40; a media entry needs no token rates
    video = price(media_catalog, "test-video-model", Usage(video_seconds=16), at=AT)
    assert (video.media, video.total, video.input) == (D("6.40"), D("6.40"), D("0"))


def test_cache_storage_bills_token_hours_and_refunds_signed(media_catalog):
    # 100,000 tokens for 2 hours = 720,000,000 token-seconds;
    # 100,000 x 2 h x $1.00 per 1M per hour = $0.20
    held = price(media_catalog, "test-cache-model", Usage(storage_token_seconds=720_000_000), at=AT)
    assert (held.storage, held.total) == (D("0.20"), D("0.20"))
    # deleted 30 minutes early: -100,000 x 1,800 s = -180,000,000 -> -$0.05
    refund = price(
        media_catalog, "test-cache-model", Usage(storage_token_seconds=-180_000_000), at=AT
    )
    assert (refund.storage, refund.total) == (D("-0.05"), D("-0.05"))


def test_units_without_a_rate_leave_the_record_unpriced(media_catalog):
    # never a price that silently leaves out what the model does not list
    assert price(media_catalog, "test-cache-model", Usage(images=1), at=AT) is UNPRICED
    assert price(media_catalog, "test-image-model", Usage(video_seconds=4), at=AT) is UNPRICED
    no_storage = Usage(storage_token_seconds=3600)
    assert price(media_catalog, "test-video-model", no_storage, at=AT) is UNPRICED
