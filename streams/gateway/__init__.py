"""The gateway: governance for any LLM client by changing its base URL (``governor gateway``)."""
