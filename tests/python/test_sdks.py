"""The official SDKs users point at a serverless endpoint, pointed at tollgate."""

from azure.ai.inference import ChatCompletionsClient, EmbeddingsClient
from azure.ai.inference.models import SystemMessage, UserMessage
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError
import openai
import pytest

API_VERSION = "2024-05-01-preview"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello!"}]


def test_azure_ai_inference_chat(demo):
    client = ChatCompletionsClient(endpoint=demo["endpoint"], credential=AzureKeyCredential(demo["key"]))
    result = client.complete(messages=[SystemMessage("You are terse."), UserMessage("Hello!")], max_tokens=5)
    assert result.choices[0].message.content.startswith("Hello")
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 5
    assert result.usage.total_tokens == result.usage.prompt_tokens + 5


def test_azure_ai_inference_chat_streamed(demo):
    client = ChatCompletionsClient(endpoint=demo["endpoint"], credential=AzureKeyCredential(demo["key"]))
    text, usage = "", None
    for update in client.complete(messages=[UserMessage("Hello!")], stream=True):
        if update.choices and update.choices[0].delta.content:
            text += update.choices[0].delta.content
        if update.usage:
            usage = update.usage
    assert text.startswith("Hello from the tollgate mock backend")
    assert usage is not None and usage.completion_tokens == 16


def test_azure_ai_inference_unified_endpoint_with_model(demo):
    client = ChatCompletionsClient(
        endpoint=demo["base"] + "/models", credential=AzureKeyCredential(demo["key"]), model=demo["deployment"]
    )
    assert client.complete(messages=[UserMessage("Hello!")]).usage.total_tokens > 0
    embeddings = EmbeddingsClient(
        endpoint=demo["base"] + "/models", credential=AzureKeyCredential(demo["key"]), model=demo["deployment"]
    )
    result = embeddings.embed(input=["first", "second"])
    assert len(result.data) == 2


def test_azure_ai_inference_wrong_key(demo):
    client = ChatCompletionsClient(endpoint=demo["endpoint"], credential=AzureKeyCredential("x" * 32))
    with pytest.raises(ClientAuthenticationError) as raised:
        client.complete(messages=[UserMessage("Hello!")])
    assert "Unauthorized" in str(raised.value)


def test_openai_azure_client(demo):
    client = openai.AzureOpenAI(azure_endpoint=demo["base"], api_key=demo["key"], api_version=API_VERSION)
    result = client.chat.completions.create(model=demo["deployment"], messages=MESSAGES)
    assert result.choices[0].message.content.startswith("Hello")
    assert result.usage.total_tokens > 0
    chunks = list(client.chat.completions.create(model=demo["deployment"], messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Hello from the tollgate mock backend")
    assert chunks[-1].usage.completion_tokens == 16


def test_openai_client_on_v1(demo):
    client = openai.OpenAI(base_url=demo["base"] + "/v1", api_key=demo["key"], max_retries=0)
    result = client.chat.completions.create(model=demo["deployment"], messages=MESSAGES)
    assert result.usage.total_tokens > 0
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model=demo["deployment"], messages=MESSAGES, stream=True)
        if c.choices
    )
    assert streamed.startswith("Hello")
    embeddings = client.embeddings.create(model=demo["deployment"], input=["a", "b"], encoding_format="float")
    assert len(embeddings.data) == 2 and len(embeddings.data[0].embedding) == 16
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-deployment", messages=MESSAGES)
    bad = openai.OpenAI(base_url=demo["base"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=demo["deployment"], messages=MESSAGES)


def test_azure_ai_inference_get_model_info_on_the_unified_and_v1_endpoints(demo):
    # No body, no header: the key alone says which deployment is meant.
    for base in ("/models", "/v1"):
        client = ChatCompletionsClient(endpoint=demo["base"] + base, credential=AzureKeyCredential(demo["key"]))
        info = client.get_model_info()
        assert info.model_name == "Meta-Llama-3-8B-Instruct"
        assert info.model_provider_name == "Meta"


def test_openai_models_list_on_v1_and_azure(demo):
    client = openai.OpenAI(base_url=demo["base"] + "/v1", api_key=demo["key"], max_retries=0)
    assert [m.id for m in client.models.list()] == [demo["deployment"]]
    assert client.models.retrieve(demo["deployment"]).id == demo["deployment"]
    azure = openai.AzureOpenAI(azure_endpoint=demo["base"], api_key=demo["key"], api_version=API_VERSION)
    assert [m.id for m in azure.models.list()] == [demo["deployment"]]
    bad = openai.OpenAI(base_url=demo["base"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_openai_include_usage_when_the_backend_streams_none(configured):
    client = openai.OpenAI(base_url=configured["base"] + "/v1", api_key=configured["key"], max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model=configured["deployment"], messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Hello")
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None, last
    assert last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    # Counted by the gateway, and it says so.
    assert last.model_extra["x_tollgate"] == {"usage": "estimated"}
    plain = list(client.chat.completions.create(model=configured["deployment"], messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in plain)


def test_openai_embeddings_in_the_sdks_default_base64_n_and_tools(demo):
    client = openai.OpenAI(base_url=demo["base"] + "/v1", api_key=demo["key"], max_retries=0)
    # No encoding_format: the SDK asks for base64 and decodes it.
    default = client.embeddings.create(model=demo["deployment"], input=["a"])
    floats = client.embeddings.create(model=demo["deployment"], input=["a"], encoding_format="float")
    assert len(default.data[0].embedding) == 16
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert any(abs(v) > 0.01 for v in default.data[0].embedding)
    several = client.chat.completions.create(model=demo["deployment"], messages=MESSAGES, n=2, max_tokens=3)
    assert [c.index for c in several.choices] == [0, 1]
    assert several.usage.completion_tokens == 6
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    called = client.chat.completions.create(model=demo["deployment"], messages=MESSAGES, tools=tools)
    call = called.choices[0].message.tool_calls[0]
    assert called.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"mock"}'
    streamed = list(client.chat.completions.create(model=demo["deployment"], messages=MESSAGES, tools=tools, stream=True))
    arguments = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in streamed
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert arguments == '{"city":"mock"}'
