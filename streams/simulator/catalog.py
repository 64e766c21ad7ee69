"""The simulated world: models, agents, tools and the texts they exchange (constants only)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    provider: str
    #: what the agent's own accounting charges per million tokens when it reports a cost; close
    #: to policies/prices.yaml but not equal (discounts), so a reported cost is recognisable
    usd_input_per_m: float
    usd_output_per_m: float
    context_limit: int
    caches_prompts: bool


MODELS = {
    m.name: m
    for m in (
        ModelSpec("gpt-4o", "openai", 2.40, 9.60, 128_000, True),
        ModelSpec("gpt-4o-mini", "openai", 0.14, 0.57, 128_000, True),
        ModelSpec("gpt-4.1", "openai", 1.90, 7.60, 1_000_000, True),
        ModelSpec("o3", "openai", 1.90, 7.60, 200_000, True),
        ModelSpec("claude-sonnet-4", "anthropic", 2.85, 14.25, 200_000, True),
        ModelSpec("claude-haiku-4", "anthropic", 0.95, 4.75, 200_000, True),
        ModelSpec("gemini-2.5-pro", "gcp.vertex_ai", 1.20, 9.50, 1_000_000, False),
        ModelSpec("gemini-2.5-flash", "gcp.vertex_ai", 0.28, 2.40, 1_000_000, False),
        # not in policies/prices.yaml nor genai-prices: the worker must flag its calls unpriced
        ModelSpec("acme-llm-9", "acme", 0.0, 0.0, 32_000, False),
    )
}
UNKNOWN_MODEL = "acme-llm-9"
#: a runaway session escalates to one of these (all priced, all expensive)
RUNAWAY_MODELS = ("claude-sonnet-4", "gpt-4o", "gpt-4.1")


@dataclass(frozen=True)
class ToolSpec:
    name: str
    median_ms: float
    timeout_ms: int
    #: a fixed price per call the agent reports (paid APIs), else None
    cost_usd: float | None = None


TOOLS = {
    t.name: t
    for t in (
        ToolSpec("lookup_order", 60, 10_000),
        ToolSpec("search_kb", 180, 10_000),
        ToolSpec("get_customer", 40, 5_000),
        ToolSpec("create_ticket", 250, 15_000),
        ToolSpec("send_email", 400, 15_000),
        ToolSpec("get_invoice", 90, 10_000),
        ToolSpec("refund_payment", 700, 30_000, 0.002),
        ToolSpec("update_billing", 300, 15_000),
        ToolSpec("web_search", 900, 20_000, 0.005),
        ToolSpec("fetch_url", 600, 20_000),
        ToolSpec("run_sql", 350, 30_000),
        ToolSpec("get_metrics", 120, 10_000),
        ToolSpec("restart_service", 1500, 30_000),
        # policy denies these two
        ToolSpec("delete_account", 200, 10_000),
        ToolSpec("shell_exec", 80, 10_000),
    )
}
DENIED_TOOLS = ("delete_account", "shell_exec")

TOOL_ERRORS = ("ToolTimeout", "RateLimited", "UpstreamHTTP500", "SchemaMismatch")
#: the chance of each tool error type given that a tool call fails
TOOL_ERROR_WEIGHTS = (0.35, 0.25, 0.25, 0.15)
#: a retry makes no sense when the arguments were wrong
RETRYABLE_TOOL_ERRORS = ("ToolTimeout", "RateLimited", "UpstreamHTTP500")
LLM_OVERLOADED = "ProviderOverloaded"
LLM_CONTEXT_EXCEEDED = "ContextLengthExceeded"
#: exceptions an agent raises on its own (not a failed step) when a session ends in ERROR
AGENT_EXCEPTIONS = ("OutputParserException", "RecursionLimitExceeded")


@dataclass(frozen=True)
class AgentProfile:
    agent_id: str
    agent_version: str
    prompt_version: str
    model_version: str
    tool_schema_version: str
    #: primary model first; the others are fallbacks
    models: tuple[str, ...]
    tools: tuple[str, ...]
    #: share of its tenant's traffic, relative to the tenant's other agents
    weight: float
    denied_tool: str


AGENTS = {
    a.agent_id: a
    for a in (
        AgentProfile(
            agent_id="support-bot",
            agent_version="1.4.0",
            prompt_version="p7",
            model_version="2025-06",
            tool_schema_version="t3",
            models=("gpt-4o-mini", "claude-haiku-4"),
            tools=("lookup_order", "search_kb", "get_customer", "create_ticket", "send_email"),
            weight=3.0,
            denied_tool="delete_account",
        ),
        AgentProfile(
            agent_id="billing-agent",
            agent_version="2.1.0",
            prompt_version="p3",
            model_version="2025-05",
            tool_schema_version="t2",
            models=("gpt-4o", "gpt-4o-mini"),
            tools=("get_invoice", "get_customer", "refund_payment", "update_billing"),
            weight=2.0,
            denied_tool="delete_account",
        ),
        AgentProfile(
            agent_id="research-agent",
            agent_version="0.9.2",
            prompt_version="p12",
            model_version="2025-06",
            tool_schema_version="t1",
            models=("claude-sonnet-4", "gemini-2.5-pro"),
            tools=("web_search", "fetch_url", "search_kb"),
            weight=1.0,
            denied_tool="shell_exec",
        ),
        AgentProfile(
            agent_id="ops-agent",
            agent_version="3.0.1",
            prompt_version="p5",
            model_version="2025-04",
            tool_schema_version="t4",
            models=("gemini-2.5-flash", "o3"),
            tools=("run_sql", "get_metrics", "restart_service", "create_ticket"),
            weight=1.0,
            denied_tool="shell_exec",
        ),
    )
}

SYSTEM_PROMPTS = {
    "support-bot": "You are a friendly customer support assistant. Use tools to look things up.",
    "billing-agent": "You resolve billing questions. Never refund more than the invoice total.",
    "research-agent": "You research technical questions and cite the sources you used.",
    "ops-agent": "You are an on-call assistant. Prefer read-only diagnostics before changes.",
}

#: what users ask, by category (a category outside this table uses ``DEFAULT_REQUESTS``)
REQUESTS = {
    "billing": (
        "I was charged twice for my subscription this month.",
        "Why is my invoice higher than last month?",
        "Please switch me to annual billing.",
    ),
    "shipping": (
        "Where is my order? It was supposed to arrive yesterday.",
        "Can I change the delivery address of my order?",
        "The tracking page has not updated for four days.",
    ),
    "returns": (
        "I want to return the blender I bought last week.",
        "My return label does not work, what should I do?",
        "How long does a refund take after you receive the item?",
    ),
    "technical": (
        "The app crashes when I upload a photo.",
        "Our dashboard shows a 502 error since this morning.",
        "How do I rotate the API key without downtime?",
    ),
    "account": (
        "I cannot log in after resetting my password.",
        "Please update the phone number on my account.",
        "How do I add a second user to our account?",
    ),
}
DEFAULT_REQUESTS = ("I need help with my account.", "Can you look into this for me?")
FOLLOW_UPS = (
    "Thanks. One more thing:",
    "That did not work, can you check again?",
    "Also, please confirm by email.",
    "Could you double-check the details?",
)
ANSWERS = {
    "billing": "I have reviewed your invoice and corrected the duplicate charge.",
    "shipping": "Your order is on its way; the new estimate is in two days.",
    "returns": "I have started your return; the refund follows once the item arrives.",
    "technical": "I found the cause and applied the documented fix.",
    "account": "Your account details are updated.",
}
DEFAULT_ANSWER = "I have taken care of your request."

#: how a PII value is worded in free text, by entity type
PII_SENTENCES = {
    "EMAIL_ADDRESS": "You can reach me at {value}.",
    "PHONE_NUMBER": "My phone number is {value}.",
    "CREDIT_CARD": "The card I used is {value}.",
    "US_SSN": "For verification my SSN is {value}.",
    "PERSON": "The account holder is {value}.",
}
#: under which key a PII value sits in a tool's JSON arguments or result
PII_KEYS = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "card_number",
    "US_SSN": "ssn",
    "PERSON": "customer_name",
}
#: how often each entity type is chosen for a PII-bearing text
PII_TYPE_WEIGHTS = {
    "EMAIL_ADDRESS": 0.30,
    "PHONE_NUMBER": 0.20,
    "PERSON": 0.25,
    "CREDIT_CARD": 0.12,
    "US_SSN": 0.13,
}
