"""Drives a running `showdown serve` with the official Anthropic Python SDK.

Run by the Rust test `server::anthropic_python_sdk`, which starts the server
and sets ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY and SHOWDOWN_MODEL. Each check
raises on failure; the script exits non-zero on the first one.
"""

import os
import sys

import anthropic

MODEL = os.environ["SHOWDOWN_MODEL"]
# Sampling settings are not parameters of this SDK version: they go in extra_body.
client = anthropic.Anthropic(max_retries=0, timeout=600)

WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}


def check(name):
    def wrap(fn):
        fn()
        print(f"ok  {name}")
        return fn

    return wrap


def prompt_total(usage):
    return (
        usage.input_tokens
        + (usage.cache_creation_input_tokens or 0)
        + (usage.cache_read_input_tokens or 0)
    )


@check("plain message")
def _():
    r = client.messages.create(
        model=MODEL,
        max_tokens=16,
        extra_body={"temperature": 0},
        messages=[{"role": "user", "content": "What is a compiler?"}],
    )
    assert r.id.startswith("msg_"), r.id
    assert r.type == "message" and r.role == "assistant"
    assert r.content[0].type == "text" and r.content[0].text.strip(), r
    assert r.stop_reason in ("end_turn", "max_tokens"), r.stop_reason
    assert r.usage.output_tokens > 0 and r.usage.input_tokens > 0
    assert r.usage.cache_read_input_tokens is not None
    assert r.usage.cache_creation_input_tokens is not None


@check("streamed message")
def _():
    with client.messages.stream(
        model=MODEL,
        max_tokens=16,
        extra_body={"temperature": 0},
        messages=[{"role": "user", "content": "Name a planet."}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text, (text, final)
    assert final.usage.output_tokens > 0


@check("count_tokens equals usage")
def _():
    request = dict(
        model=MODEL,
        system="You are terse.",
        messages=[{"role": "user", "content": "Count these tokens, please."}],
        tools=[WEATHER],
    )
    counted = client.messages.count_tokens(**request)
    r = client.messages.create(max_tokens=1, extra_body={"temperature": 0}, **request)
    assert counted.input_tokens == prompt_total(r.usage), (counted, r.usage)


@check("forced tool use, round-tripped")
def _():
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    r = client.messages.create(
        model=MODEL,
        max_tokens=100,
        extra_body={"temperature": 0},
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=messages,
    )
    assert r.stop_reason == "tool_use", r
    calls = [b for b in r.content if b.type == "tool_use"]
    assert len(calls) >= 1, r.content
    call = calls[0]
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert isinstance(call.input["city"], str)
    assert call.input["unit"] in ("celsius", "fahrenheit"), call.input
    messages += [
        {"role": "assistant", "content": r.content},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": call.id,
                    "content": "18 degrees and sunny",
                }
            ],
        },
    ]
    r2 = client.messages.create(
        model=MODEL, max_tokens=30, extra_body={"temperature": 0}, tools=[WEATHER], messages=messages
    )
    assert r2.stop_reason in ("end_turn", "max_tokens", "tool_use"), r2
    assert r2.usage.cache_read_input_tokens > 0, r2.usage


@check("streamed tool use")
def _():
    with client.messages.stream(
        model=MODEL,
        max_tokens=100,
        extra_body={"temperature": 0},
        tools=[WEATHER],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Oslo, in celsius?"}],
    ) as stream:
        final = stream.get_final_message()
    calls = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and calls, final
    assert isinstance(calls[0].input, dict) and "city" in calls[0].input, calls[0]


@check("cache read on the second request")
def _():
    system = [
        {
            "type": "text",
            "text": " ".join(f"rule {i}: be precise." for i in range(120)),
            "cache_control": {"type": "ephemeral"},
        }
    ]
    first = client.messages.create(
        model=MODEL,
        max_tokens=1,
        system=system,
        messages=[{"role": "user", "content": "Hi"}],
    )
    second = client.messages.create(
        model=MODEL,
        max_tokens=1,
        system=system,
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert first.usage.cache_creation_input_tokens > 0, first.usage
    assert second.usage.cache_read_input_tokens >= first.usage.cache_creation_input_tokens, second.usage


@check("errors map to the SDK's exception classes")
def _():
    try:
        client.messages.create(
            model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
        raise AssertionError("unknown model accepted")
    except anthropic.NotFoundError as e:
        assert e.status_code == 404 and e.body["error"]["type"] == "not_found_error"
        assert e.request_id and e.request_id.startswith("req_")
    try:
        client.messages.create(
            model=MODEL,
            max_tokens=5,
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "nope"},
            messages=[{"role": "user", "content": "x"}],
        )
        raise AssertionError("a tool_choice naming no tool was accepted")
    except anthropic.BadRequestError as e:
        assert e.body["error"]["type"] == "invalid_request_error"
    try:
        client.messages.create(
            model=MODEL,
            max_tokens=5,
            messages=[{"role": "user", "content": "word " * 40000}],
        )
        raise AssertionError("an over-long prompt was accepted")
    except anthropic.BadRequestError as e:
        assert "prompt is too long" in e.body["error"]["message"], e.body
    bad_key = anthropic.Anthropic(api_key="wrong-key", max_retries=0)
    try:
        bad_key.messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
        raise AssertionError("a wrong key was accepted")
    except anthropic.AuthenticationError as e:
        assert e.status_code == 401


@check("models list")
def _():
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids, ids
    assert client.models.retrieve(MODEL).id == MODEL


print("all SDK checks passed")
sys.exit(0)
