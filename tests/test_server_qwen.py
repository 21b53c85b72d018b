"""Structured output and tool calls on the real Qwen2.5-Coder-0.5B-Instruct through `orcd serve` and the official
openai client (issue 11's evidence): `chat.completions.parse` with ten pydantic models (nested objects, enums,
arrays, optional fields) parses and validates every time; an unsupported schema feature is a 400 naming the field;
a tool-call round trip (call → tool result → final answer), streamed tool-call deltas, and `tool_choice`
`required` / a named function enforced by the grammar. Greedy decoding keeps it reproducible; every generation is
short, so the module runs in about two minutes on two CPU cores."""
import json
from enum import Enum
from typing import Literal, Optional

import pytest
from pydantic import BaseModel

from conftest import real_model
from fake_engine import real_server

pytest.importorskip('llguidance')
MODEL = 'qwen2.5-coder-0.5b-instruct'


@pytest.fixture(scope='module')
def rs():
    real_model(MODEL)
    with real_server(MODEL, '--device', 'cpu', '--ctx', '1024', '--inference-timeout', 300, ready_timeout=240) as s: yield s
    assert s.proc.returncode == 0, s.log()[-2000:]


@pytest.fixture(scope='module')
def oai(rs):
    import openai
    return openai.OpenAI(base_url=rs.url + '/v1', api_key='none', max_retries=0, timeout=300)


# ---------------------------------------------------------------- ten pydantic models
class Person(BaseModel):
    name: str
    age: int
    email: Optional[str]

class Address(BaseModel):
    street: str
    city: str
    country: str

class Customer(BaseModel):
    name: str
    address: Address

class Colour(str, Enum):
    red = 'red'; green = 'green'; blue = 'blue'

class Paint(BaseModel):
    colour: Colour
    glossy: bool

class Todo(BaseModel):
    task: str
    done: bool

class TodoList(BaseModel):
    title: str
    items: list[Todo]

class Recipe(BaseModel):
    name: str
    ingredients: list[str]
    minutes: int

class Book(BaseModel):
    title: str
    author: str
    year: int
    genre: Literal['fiction', 'non-fiction', 'poetry']
    rating: Optional[float]

class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: Literal['sunny', 'cloudy', 'rain', 'snow']

class Member(BaseModel):
    name: str
    role: Literal['host', 'guest']

class Meeting(BaseModel):
    topic: str
    members: list[Member]

class Dimensions(BaseModel):
    width_cm: float
    height_cm: float

class Product(BaseModel):
    sku: str
    price: float
    tags: list[str]
    dimensions: Optional[Dimensions]

class Movie(BaseModel):
    title: str
    year: int
    cast: list[str]
    sequel: Optional[str]


CASES = [
    (Person, 'Alice is 30 years old; her email is alice@example.com.'),
    (Customer, 'Bob lives at 12 Rue de Rivoli, Paris, France.'),
    (Paint, 'A glossy blue paint.'),
    (TodoList, 'Shopping: buy milk (done), buy eggs (not done).'),
    (Recipe, 'Pancakes take 20 minutes and need flour, milk and eggs.'),
    (Book, 'Dune by Frank Herbert, a 1965 novel, rated 4.5.'),
    (Weather, 'It is 18.5 degrees and sunny in Rome.'),
    (Meeting, 'Budget review hosted by Carol with guest Dan.'),
    (Product, 'Item SKU-42 costs 9.99, tagged kitchen and steel, 30 cm wide and 20 cm high.'),
    (Movie, 'Alien (1979) starring Sigourney Weaver and Tom Skerritt; its sequel is Aliens.'),
]


def test_parse_ten_pydantic_models(oai):
    ok = []
    for model_cls, text in CASES:
        r = oai.chat.completions.parse(model=MODEL, temperature=0, max_tokens=160, response_format=model_cls,
                                       messages=[{'role': 'system', 'content': 'Extract the data as JSON.'},
                                                 {'role': 'user', 'content': text}])
        m = r.choices[0].message
        assert r.choices[0].finish_reason == 'stop' and isinstance(m.parsed, model_cls), (model_cls, m.content)
        model_cls.model_validate_json(m.content)        # parses and validates on its own too
        ok.append(model_cls.__name__)
        print(f'\n{model_cls.__name__}: {m.content}')
    assert len(ok) == 10


def test_json_object_and_unsupported_schema(oai):
    import openai
    r = oai.chat.completions.create(model=MODEL, temperature=0, max_tokens=60, response_format={'type': 'json_object'},
                                    messages=[{'role': 'user', 'content': 'Give the colour and size of a small red ball.'}])
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    bad = {'type': 'json_schema', 'json_schema': {'name': 'x', 'schema': {'type': 'string', 'format': 'credit-card'}}}
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, max_tokens=5, response_format=bad, messages=[{'role': 'user', 'content': 'x'}])
    err = e.value.body
    assert err['param'] == 'response_format' and 'credit-card' in err['message']


TOOLS = [{'type': 'function', 'function': {
    'name': 'get_weather', 'description': 'Current weather of a city',
    'parameters': {'type': 'object', 'properties': {'city': {'type': 'string'}, 'unit': {'enum': ['celsius', 'fahrenheit']}},
                   'required': ['city', 'unit'], 'additionalProperties': False}}},
    {'type': 'function', 'function': {
    'name': 'get_time', 'description': 'Current local time of a city',
    'parameters': {'type': 'object', 'properties': {'city': {'type': 'string'}}, 'required': ['city']}}}]


def test_tool_call_round_trip(oai):
    """call → tool result → final answer. The history renders through Qwen's own template (the assistant's call as
    `<tool_call>`, the result as `<tool_response>`). Qwen2.5-Coder-0.5B, given a bare tool result, calls again (its
    repeated calls come back as `tool_calls`, not as text); asked to answer, it answers from the result."""
    msgs = [{'role': 'user', 'content': 'What is the weather in Paris, in celsius?'}]
    r = oai.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, temperature=0, max_tokens=80)
    c = r.choices[0]
    assert c.finish_reason == 'tool_calls' and c.message.tool_calls, c.message
    call = c.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert call.function.name == 'get_weather' and 'paris' in args['city'].lower()
    result = {'temperature': 18, 'unit': 'celsius', 'sky': 'cloudy'}
    msgs += [c.message.model_dump(exclude_none=True), {'role': 'tool', 'tool_call_id': call.id, 'content': json.dumps(result)}]
    again = oai.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, temperature=0, max_tokens=60).choices[0]
    assert again.message.tool_calls or again.message.content      # either way, parsed: no call syntax leaks as text
    if again.message.content: assert '"arguments"' not in again.message.content
    msgs.append({'role': 'user', 'content': 'Answer my question in one sentence.'})
    r2 = oai.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, temperature=0, max_tokens=60)
    final = r2.choices[0]
    assert final.finish_reason == 'stop' and not final.message.tool_calls and '18' in final.message.content, final.message
    print(f'\nuser: {msgs[0]["content"]}\ncall: {call.function.name}({call.function.arguments})\n'
          f'tool: {json.dumps(result)}\nanswer: {final.message.content}')
    # each turn re-uses the previous prompt from the cache
    assert r2.usage.prompt_tokens_details.cached_tokens >= r.usage.prompt_tokens - 1


def test_tool_call_streamed_deltas(oai):
    msgs = [{'role': 'user', 'content': 'What time is it in Tokyo?'}]
    chunks = list(oai.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, temperature=0, max_tokens=60, stream=True))
    deltas = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    fins = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert fins == ['tool_calls'] and deltas and deltas[0].index == 0 and deltas[0].id.startswith('call_')
    assert deltas[0].function.name == 'get_time' and json.loads(deltas[0].function.arguments)['city'].lower().startswith('tokyo')
    assert not ''.join(ch.choices[0].delta.content or '' for ch in chunks if ch.choices).strip()   # no call text leaks


def test_tool_choice_required_and_named_are_enforced(oai):
    # a question no tool answers: 'required' still yields a call, a named choice calls that function
    msgs = [{'role': 'user', 'content': 'Tell me a joke about Paris.'}]
    r = oai.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, tool_choice='required', temperature=0, max_tokens=60)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == 'tool_calls' and calls and calls[0].function.name in ('get_weather', 'get_time')
    json.loads(calls[0].function.arguments)
    r = oai.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, temperature=0, max_tokens=60,
                                    tool_choice={'type': 'function', 'function': {'name': 'get_weather'}})
    calls = r.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ['get_weather']
    args = json.loads(calls[0].function.arguments)
    assert set(args) == {'city', 'unit'} and args['unit'] in ('celsius', 'fahrenheit')   # the schema is enforced
    r = oai.chat.completions.create(model=MODEL, messages=[{'role': 'user', 'content': 'Weather in Oslo?'}], tools=TOOLS,
                                    tool_choice='none', temperature=0, max_tokens=20)
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason in ('stop', 'length')
